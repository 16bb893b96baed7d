-- The request mix of bench/http_cost.py: 20 requests a cycle over the bench app's routes,
-- ids drawn at random so path parameters vary; one in 20 answers 404, one in 20 answers 500.
local body = '{"service_type": "security", "zone": "downtown"}'
local json = {["Content-Type"] = "application/json"}
local mix = {
  "panic", "panic", "panic", "panic", "panic", "panic", "panic", "panic",
  "zone", "zone", "zone", "zone",
  "health", "health", "health",
  "create", "create", "create",
  "missing",
  "escalate",
}
local i = 0

request = function()
  i = i % #mix + 1
  local kind = mix[i]
  local id = math.random(1, 1000000)
  if kind == "panic" then
    return wrk.format("GET", "/api/v1/panic/" .. id)
  elseif kind == "zone" then
    return wrk.format("GET", "/api/v1/firms/firm" .. (id % 40) .. "/zones/zone" .. (id % 25))
  elseif kind == "health" then
    return wrk.format("GET", "/api/v1/health")
  elseif kind == "create" then
    return wrk.format("POST", "/api/v1/panic", json, body)
  elseif kind == "missing" then
    return wrk.format("GET", "/api/v1/dispatch/" .. id)
  else
    return wrk.format("GET", "/api/v1/panic/" .. id .. "/escalate")
  end
end
