-- id: capabilities-added
-- title: Containers adding any capability but NET_BIND_SERVICE
-- severity: medium
-- frameworks: pss-restricted
-- section: PSS Restricted "Capabilities"
-- remediation: Add at most NET_BIND_SERVICE to securityContext.capabilities.add.
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
  WHERE EXISTS (
      SELECT 1 FROM jsonb_array_elements_text(COALESCE(container->'securityContext'->'capabilities'->'add', '[]')) AS cap
      WHERE cap <> 'NET_BIND_SERVICE')
);
