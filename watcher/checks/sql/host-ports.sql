-- id: host-ports
-- title: Containers binding host ports
-- severity: medium
-- frameworks: pss-baseline, pss-restricted
-- section: PSS Baseline "Host Ports"
-- remediation: Remove ports[].hostPort; expose the container through a Service instead.
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
      SELECT 1 FROM jsonb_array_elements(COALESCE(container->'ports', '[]')) AS port
      WHERE COALESCE((port->>'hostPort')::int, 0) <> 0)
);
