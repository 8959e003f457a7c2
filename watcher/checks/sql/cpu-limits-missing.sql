-- id: cpu-limits-missing
-- title: Containers without a CPU limit
-- severity: medium
-- frameworks: nsa-cisa
-- section: NSA/CISA v1.2 "Network separation and hardening: Resource policies"
-- remediation: Set resources.limits.cpu (or a LimitRange default) so one container cannot starve its node.
--
-- Returns one row per offending object: context_name, kind, namespace, name, uid.
\ir include/expansions.sql
WITH pod_specs AS (  -- every pod spec: pods and the pod templates of workloads
:pod_specs
)
SELECT s.context_name, s.kind, s.namespace, s.name, s.uid
FROM pod_specs s
WHERE EXISTS (
  SELECT 1 FROM (  -- every init, regular and ephemeral container of the spec
:containers
  ) AS c
  WHERE container_type <> 'ephemeral' AND container->'resources'->'limits'->'cpu' IS NULL
);
