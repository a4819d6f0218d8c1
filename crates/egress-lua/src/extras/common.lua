-- Shared by egressd's built-in policy-extras helpers: loading data files.
local common = {}

-- A TOML or JSON data file (by extension; TOML otherwise), as a table.
function common.load(path)
  if type(path) ~= 'string' then
    error(string.format('expected a file path (string), got %s', type(path)), 3)
  end
  if path:match('%.json$') then
    return kumo.serde.json_load(path)
  end
  return kumo.serde.toml_load(path)
end

-- Keys of a table, sorted, so merging and errors are deterministic.
function common.sorted_keys(t)
  local keys = {}
  for k in pairs(t) do
    table.insert(keys, k)
  end
  table.sort(keys, function(a, b)
    return tostring(a) < tostring(b)
  end)
  return keys
end

-- Copies `from`'s fields over `into` (one level deep), leaving out the keys
-- in `skip`.
function common.merge(into, from, skip)
  for _, k in ipairs(common.sorted_keys(from)) do
    if not (skip and skip[k]) then
      into[k] = from[k]
    end
  end
  return into
end

-- Logs, once per key (in this process, whichever Lua state loads the policy),
-- that a KumoMTA setting egressd does not have is ignored.
local warned = {}
function common.ignored(where, key, what)
  if not warned[key] then
    warned[key] = true
    common.warn_once(string.format('%s is a KumoMTA %s egressd does not have; ignored (first seen in %s)', key, what or 'setting', where))
  end
end

-- An error value as one line of words: its first line (no traceback).
function common.words(err)
  return (tostring(err):match('^[^\n]*'):gsub('^runtime error: ', ''))
end

-- Calls a kumo.make_* function; its error is prefixed with where the data came from.
function common.make(maker, what, where, params)
  local ok, made = pcall(maker, params)
  if not ok then
    -- Drop the `file:line:` of this helper; the data file is the place to look.
    local message = tostring(made):gsub('^[^:]*:%d+: ', '')
    error(string.format('%s: %s: %s', where, what, message), 0)
  end
  return made
end

return common
