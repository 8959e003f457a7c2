-- id: proc-mount-unmasked
-- title: Containers with an unmasked /proc
-- severity: medium
-- frameworks: pss-restricted
-- section: PSS Baseline "/proc Mount Type" (the API server refuses it outside a user namespace; Restricted refuses it inside one too)
-- remediation: Remove securityContext.procMount (Default masks the sensitive parts of /proc).
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
  WHERE COALESCE(container->'securityContext'->>'procMount', 'Default') <> 'Default'
);
