-- Argo CD health check for the aigc.dev kinds (Dataset, Model, TrainingJob,
-- InferenceService, StorageTier). Argo CD runs it with the live object in `obj` and reads
-- back `status` (Healthy, Progressing, Degraded or Unknown) and `message`.
--
-- The operator reports `status.phase` (all kinds but StorageTier) and `status.conditions`
-- (type, status, reason, message); the phase decides, the conditions explain.

local healthy = {
  Ready = true,      -- Dataset, Model, InferenceService: usable
  Migrating = true,  -- Dataset, Model: still readable on the old tier while moving
  Succeeded = true,  -- TrainingJob: finished, output Model registered
}
local progressing = {
  Pending = true, Preparing = true, Verifying = true, Queued = true,
  Admitted = true, Running = true, Deploying = true,
}
local degraded = { Failed = true }

-- The condition that best explains the phase: a Failed condition that holds, then the first
-- that does not hold (why it waits), then Ready.
local function explanation(conditions)
  local unmet, ready
  for _, c in ipairs(conditions or {}) do
    if c.type == "Failed" and c.status == "True" then
      return c
    end
    if unmet == nil and c.status == "False" and c.type ~= "Failed" then
      unmet = c
    end
    if c.type == "Ready" then
      ready = c
    end
  end
  return unmet or ready
end

local function describe(prefix, condition)
  if condition == nil then
    return prefix
  end
  local text = condition.reason or ""
  if condition.message ~= nil and condition.message ~= "" then
    text = text .. ": " .. condition.message
  end
  if text == "" then
    return prefix
  end
  return prefix .. " (" .. text .. ")"
end

local hs = {}
local status = obj.status
if status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report a status"
  return hs
end

local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and status.observedGeneration ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local why = explanation(status.conditions)
local phase = status.phase

if phase == nil then
  -- StorageTier has no phase: its Ready condition says whether the last probe reached the
  -- backend.
  local ready
  for _, c in ipairs(status.conditions or {}) do
    if c.type == "Ready" then
      ready = c
    end
  end
  if ready == nil or ready.status == "Unknown" then
    hs.status = "Progressing"
    hs.message = describe("Not probed yet", ready)
  elseif ready.status == "True" then
    hs.status = "Healthy"
    hs.message = describe("Ready", ready)
  else
    hs.status = "Degraded"
    hs.message = describe("Not ready", ready)
  end
  return hs
end

if healthy[phase] then
  hs.status = "Healthy"
  if phase == "Ready" and status.replicas ~= nil and status.readyReplicas ~= nil then
    hs.message = "Ready: " .. tostring(status.readyReplicas) .. "/" .. tostring(status.replicas) .. " replicas"
  else
    hs.message = phase
  end
elseif progressing[phase] then
  hs.status = "Progressing"
  hs.message = describe(phase, why)
elseif degraded[phase] then
  hs.status = "Degraded"
  hs.message = describe(phase, why)
else
  hs.status = "Unknown"
  hs.message = "Unknown phase " .. tostring(phase)
end
return hs
