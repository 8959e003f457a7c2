-- id: capabilities-not-dropped
-- title: Containers that do not drop ALL capabilities
-- severity: medium
-- frameworks: nsa-cisa, pss-restricted
-- section: NSA/CISA v1.2 "Kubernetes Pod security: Pod security enforcement"; PSS Restricted "Capabilities"
-- remediation: Set securityContext.capabilities.drop: [ALL] and add back only what the process needs.
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
  WHERE NOT EXISTS (
      SELECT 1 FROM jsonb_array_elements_text(COALESCE(container->'securityContext'->'capabilities'->'drop', '[]')) AS cap
      WHERE cap = 'ALL')
);
