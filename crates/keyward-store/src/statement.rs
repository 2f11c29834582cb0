//! One statement text and one bind list for both backends.
//!
//! A [`Statement`] is SQL with numbered placeholders (`$1`, `$2`, …) and the values bound to
//! them, in order. PostgreSQL reads `$N` natively, and sqlx's SQLite driver binds a `$N`
//! parameter to the N-th value too, so one text serves both. A statement is run through
//! [`Conn`], which every sqlx connection of a backend that speaks this crate's column types
//! implements; the writes in `writes.rs` and the reads in `reads.rs` are written once
//! against it. Where the two backends need different SQL, the text is in `dialect.rs`.
//!
//! Values are typed even when null ([`Value::Text(None)`](Value::Text) is a text null):
//! PostgreSQL takes a parameter's type from its binding, so a null bound with the wrong type
//! would be refused by a `BIGINT` column.

use std::future::Future;

use sqlx::{Database, Encode, Executor, IntoArguments, Type};

use crate::StoreError;
use crate::dialect::Dialect;
use crate::sql::{Columns, backend};

/// A value bound to a placeholder: every stored column is text, a 64-bit integer or a flag.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Text(Option<String>),
    Int(Option<i64>),
    Flag(bool),
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(Some(v))
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(Some(v.to_owned()))
    }
}

impl From<&String> for Value {
    fn from(v: &String) -> Self {
        Value::Text(Some(v.clone()))
    }
}

impl From<Option<&str>> for Value {
    fn from(v: Option<&str>) -> Self {
        Value::Text(v.map(str::to_owned))
    }
}

impl From<Option<String>> for Value {
    fn from(v: Option<String>) -> Self {
        Value::Text(v)
    }
}

impl From<&Option<String>> for Value {
    fn from(v: &Option<String>) -> Self {
        Value::Text(v.clone())
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(Some(v))
    }
}

impl From<Option<i64>> for Value {
    fn from(v: Option<i64>) -> Self {
        Value::Int(v)
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Flag(v)
    }
}

/// SQL with `$N` placeholders and the values bound to them, in order.
#[derive(Debug)]
pub(crate) struct Statement {
    sql: sqlx::SqlStr,
    args: Vec<Value>,
}

impl Statement {
    /// A statement with a fixed text.
    pub(crate) fn new(sql: &'static str) -> Self {
        Self {
            sql: sqlx::SqlSafeStr::into_sql_str(sql),
            args: Vec::new(),
        }
    }

    /// A statement whose text was assembled from fixed fragments (column names of this
    /// crate, never input), such as the key write built from its column list.
    pub(crate) fn assembled(sql: String) -> Self {
        Self {
            sql: sqlx::SqlSafeStr::into_sql_str(sqlx::AssertSqlSafe(sql)),
            args: Vec::new(),
        }
    }

    /// Binds the next placeholder.
    pub(crate) fn bind(mut self, value: impl Into<Value>) -> Self {
        self.args.push(value.into());
        self
    }

    /// Binds the next placeholders, in order.
    pub(crate) fn bind_all(mut self, values: impl IntoIterator<Item = Value>) -> Self {
        self.args.extend(values);
        self
    }

    /// The sqlx query of this statement, for a backend that encodes every [`Value`].
    fn query<'q, DB>(self) -> sqlx::query::Query<'q, DB, DB::Arguments>
    where
        DB: Database,
        Option<String>: for<'e> Encode<'e, DB> + Type<DB>,
        Option<i64>: for<'e> Encode<'e, DB> + Type<DB>,
        bool: for<'e> Encode<'e, DB> + Type<DB>,
    {
        self.args
            .into_iter()
            .fold(sqlx::query(self.sql), |query, value| match value {
                Value::Text(v) => query.bind(v),
                Value::Int(v) => query.bind(v),
                Value::Flag(v) => query.bind(v),
            })
    }
}

/// A connection (or a transaction, through `&mut *tx`) that runs [`Statement`]s. Implemented
/// once, for every sqlx connection whose backend encodes [`Value`]s and decodes [`Columns`].
pub(crate) trait Conn: Send {
    /// The backend, for the statements that differ between backends.
    type Dialect: Dialect;
    /// A row as the backend returns it.
    type Row: Columns + Send;

    /// Runs `statement`; returns how many rows it changed.
    fn execute(
        &mut self,
        statement: Statement,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Runs `statement`; returns its first row, if any.
    fn fetch_optional(
        &mut self,
        statement: Statement,
    ) -> impl Future<Output = Result<Option<Self::Row>, StoreError>> + Send;

    /// Runs `statement`; returns all its rows.
    fn fetch_all(
        &mut self,
        statement: Statement,
    ) -> impl Future<Output = Result<Vec<Self::Row>, StoreError>> + Send;
}

impl<C> Conn for C
where
    C: sqlx::Connection,
    C::Database: Dialect,
    for<'e> &'e mut C: Executor<'e, Database = C::Database>,
    <C::Database as Database>::Arguments: IntoArguments<C::Database>,
    Option<String>: for<'e> Encode<'e, C::Database> + Type<C::Database>,
    Option<i64>: for<'e> Encode<'e, C::Database> + Type<C::Database>,
    bool: for<'e> Encode<'e, C::Database> + Type<C::Database>,
    <C::Database as Database>::Row: Columns,
{
    type Dialect = C::Database;
    type Row = <C::Database as Database>::Row;

    async fn execute(&mut self, statement: Statement) -> Result<u64, StoreError> {
        let result = statement.query().execute(self).await.map_err(backend)?;
        Ok(C::Database::rows_affected(&result))
    }

    async fn fetch_optional(
        &mut self,
        statement: Statement,
    ) -> Result<Option<Self::Row>, StoreError> {
        statement
            .query()
            .fetch_optional(self)
            .await
            .map_err(backend)
    }

    async fn fetch_all(&mut self, statement: Statement) -> Result<Vec<Self::Row>, StoreError> {
        statement.query().fetch_all(self).await.map_err(backend)
    }
}
