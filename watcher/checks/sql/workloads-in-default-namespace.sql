-- id: workloads-in-default-namespace
-- title: Pods and workloads in the default namespace
-- severity: low
-- frameworks: nsa-cisa
-- section: NSA/CISA v1.2 "Network separation and hardening: Namespaces"
-- remediation: Run each application in a namespace of its own, where policies and quotas can be scoped to it.
--
-- Returns one row per offending object: context_name, kind, namespace, name, uid.
\ir include/expansions.sql
WITH pod_specs AS (  -- every pod spec: pods and the pod templates of workloads
:pod_specs
)
SELECT s.context_name, s.kind, s.namespace, s.name, s.uid
FROM pod_specs s
WHERE s.namespace = 'default';
