-- id: privilege-escalation-allowed
-- title: Containers that may gain more privileges than their parent process
-- severity: medium
-- frameworks: nsa-cisa, pss-restricted
-- section: NSA/CISA v1.2 "Kubernetes Pod security: Pod security enforcement"; PSS Restricted "Privilege Escalation"
-- remediation: Set securityContext.allowPrivilegeEscalation: false in every container.
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
  WHERE (container->'securityContext'->>'allowPrivilegeEscalation') IS DISTINCT FROM 'false'
);
