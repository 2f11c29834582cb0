-- wrk script: POST /v1/keys/verify with the key and root key from the environment.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("KEYWARD_BENCH_ROOT")
wrk.body = '{"key":"' .. os.getenv("KEYWARD_BENCH_KEY") .. '","permissions":"orders.read"}'
