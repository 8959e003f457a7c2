-- id: windows-host-process
-- title: Windows HostProcess containers
-- severity: high
-- frameworks: pss-baseline, pss-restricted
-- section: PSS Baseline "HostProcess"
-- remediation: Remove windowsOptions.hostProcess: HostProcess containers run with the node's privileges.
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
  WHERE (container->'securityContext'->'windowsOptions'->>'hostProcess')::boolean
     OR (pod->'securityContext'->'windowsOptions'->>'hostProcess')::boolean
);
