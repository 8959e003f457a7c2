-- id: run-as-root-allowed
-- title: Containers allowed to run as root (runAsNonRoot not true)
-- severity: medium
-- frameworks: nsa-cisa, pss-restricted
-- section: NSA/CISA v1.2 "Kubernetes Pod security: Non-root containers and rootless container engines"; PSS Restricted "Running as Non-root"
-- remediation: Set securityContext.runAsNonRoot: true on the pod (and never false on a container).
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
  WHERE COALESCE((container->'securityContext'->>'runAsNonRoot')::boolean,
           (pod->'securityContext'->>'runAsNonRoot')::boolean, false) IS NOT TRUE
);
