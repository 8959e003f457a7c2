-- id: privileged-containers
-- title: Privileged containers
-- severity: high
-- frameworks: nsa-cisa, pss-baseline, pss-restricted
-- section: NSA/CISA v1.2 "Kubernetes Pod security: Pod security enforcement"; PSS Baseline "Privileged Containers"
-- remediation: Remove securityContext.privileged (or set it to false); grant only the capabilities the process needs.
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
  WHERE (container->'securityContext'->>'privileged')::boolean
);
