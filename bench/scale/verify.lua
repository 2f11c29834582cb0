-- wrk script for bench/scale.py: POST /v1/keys/verify over the keys in KEYWARD_SCALE_KEYS (one a
-- line). KEYWARD_SCALE_MODE: `all` (each thread verifies its stripe once, then stops: warms the
-- cache with every key), `zipf` (keys by a Zipf law, s = KEYWARD_SCALE_S, rank 1 the first key)
-- or `uniform`. In `all` mode each thread creates KEYWARD_SCALE_DONE.<thread id> when it is done;
-- wrk keeps its duration, so the caller interrupts it then.
local counter = 0
function setup(thread)
  thread:set("id", counter)
  thread:set("threads", 0)
  counter = counter + 1
end

function init(args)
  keys = {}
  for line in io.lines(os.getenv("KEYWARD_SCALE_KEYS")) do keys[#keys + 1] = line end
  mode = os.getenv("KEYWARD_SCALE_MODE")
  nthreads = tonumber(os.getenv("KEYWARD_SCALE_THREADS"))
  math.randomseed(1234 + id)
  next_index = id + 1
  if mode == "zipf" then
    local s = tonumber(os.getenv("KEYWARD_SCALE_S") or "1.0")
    cdf = {}
    local total = 0
    for i = 1, #keys do total = total + 1 / (i ^ s); cdf[i] = total end
    for i = 1, #keys do cdf[i] = cdf[i] / total end
  end
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer " .. os.getenv("KEYWARD_SCALE_ROOT")
end

local function zipf()
  local u = math.random()
  local lo, hi = 1, #cdf
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if cdf[mid] < u then lo = mid + 1 else hi = mid end
  end
  return lo
end

function request()
  local i
  if mode == "all" then
    if next_index > #keys then
      -- Done: say so (wrk itself runs until its duration or SIGINT) and stop this thread.
      io.open(os.getenv("KEYWARD_SCALE_DONE") .. "." .. id, "w"):close()
      wrk.thread:stop()
      next_index = #keys
    end
    i = next_index
    next_index = next_index + nthreads
  elseif mode == "zipf" then
    i = zipf()
  else
    i = math.random(#keys)
  end
  return wrk.format(nil, nil, nil, '{"key":"' .. keys[i] .. '","permissions":"orders.read"}')
end
