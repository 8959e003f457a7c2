-- id: host-ipc
-- title: Pods sharing the host's IPC namespace
-- severity: high
-- frameworks: nsa-cisa, pss-baseline, pss-restricted
-- section: NSA/CISA v1.2 "Kubernetes Pod security: Pod security enforcement"; PSS Baseline "Host Namespaces"
-- remediation: Remove spec.hostIPC (or set it to false).
--
-- Returns one row per offending object: context_name, kind, namespace, name, uid.
\ir include/expansions.sql
WITH pod_specs AS (  -- every pod spec: pods and the pod templates of workloads
:pod_specs
)
SELECT s.context_name, s.kind, s.namespace, s.name, s.uid
FROM pod_specs s
WHERE (s.pod->>'hostIPC')::boolean;
