-- id: dangerous-capabilities
-- title: Containers adding SYS_ADMIN, NET_ADMIN or another host-level capability
-- severity: high
-- frameworks: nsa-cisa
-- section: NSA/CISA v1.2 "Kubernetes Pod security: Pod security enforcement"
-- remediation: Drop the capability; SYS_ADMIN, NET_ADMIN, SYS_PTRACE, SYS_MODULE, SYS_RAWIO, DAC_READ_SEARCH, BPF and ALL each let a container reach the host.
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
      WHERE upper(regexp_replace(cap, '^CAP_', '', 'i')) IN (
        'ALL', 'SYS_ADMIN', 'NET_ADMIN', 'SYS_PTRACE', 'SYS_MODULE', 'SYS_RAWIO', 'DAC_READ_SEARCH', 'BPF'))
);
