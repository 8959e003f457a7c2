-- id: default-service-account
-- title: Pods running as their namespace's default service account
-- severity: low
-- frameworks: nsa-cisa
-- section: NSA/CISA v1.2 "Authentication and authorization: Role-based access control"
-- remediation: Give each workload its own service account with only the permissions it needs.
--
-- Returns one row per offending object: context_name, kind, namespace, name, uid.
\ir include/expansions.sql
WITH pod_specs AS (  -- every pod spec: pods and the pod templates of workloads
:pod_specs
)
SELECT s.context_name, s.kind, s.namespace, s.name, s.uid
FROM pod_specs s
WHERE COALESCE(NULLIF(s.pod->>'serviceAccountName', ''), NULLIF(s.pod->>'serviceAccount', ''), 'default') = 'default';
