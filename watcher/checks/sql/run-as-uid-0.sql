-- id: run-as-uid-0
-- title: Containers running as user id 0
-- severity: high
-- frameworks: nsa-cisa, pss-restricted
-- section: NSA/CISA v1.2 "Kubernetes Pod security: Non-root containers and rootless container engines"; PSS Restricted "Running as Non-root user"
-- remediation: Set runAsUser to a non-zero uid (or leave it to the image's non-root USER).
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
  WHERE COALESCE(container->'securityContext'->>'runAsUser', pod->'securityContext'->>'runAsUser') = '0'
);
