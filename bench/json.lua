-- wrk script: the same POST as verify.lua, sent to the trivial JSON server.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("KEYWARD_BENCH_ROOT")
wrk.body = '{"key":"' .. os.getenv("KEYWARD_BENCH_KEY") .. '","permissions":"orders.read"}'
