-- wrk script for bench/scale.py: each thread creates its share of keys (KEYWARD_SCALE_N / threads)
-- with POST /v1/keys and appends each returned secret to OUT.<thread id>; it stops at its share
-- (wrk keeps its duration, so the caller interrupts it once every share is written).
local counter = 0
function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end

function init(args)
  share = tonumber(os.getenv("KEYWARD_SCALE_SHARE"))
  out = io.open(os.getenv("KEYWARD_SCALE_OUT") .. "." .. id, "w")
  made = 0
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer " .. os.getenv("KEYWARD_SCALE_ROOT")
end

function request()
  return wrk.format(nil, nil, nil, '{"owner":"scale-' .. id .. '-' .. (made % 1000) .. '","permissions":["orders.read"]}')
end

function response(status, headers, body)
  local key = body:match('"key":"(kw_[^"]+)"')
  if status == 201 and key then
    out:write(key, "\n")
    made = made + 1
  end
  if made >= share then
    out:flush()
    wrk.thread:stop()
  end
end
