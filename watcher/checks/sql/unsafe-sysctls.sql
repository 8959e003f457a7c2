-- id: unsafe-sysctls
-- title: Pods setting sysctls outside the safe set
-- severity: medium
-- frameworks: pss-baseline, pss-restricted
-- section: PSS Baseline "Sysctls"
-- remediation: Set only the namespaced safe sysctls (kernel.shm_rmid_forced, net.ipv4.ip_local_port_range, ...).
--
-- Returns one row per offending object: context_name, kind, namespace, name, uid.
\ir include/expansions.sql
WITH pod_specs AS (  -- every pod spec: pods and the pod templates of workloads
:pod_specs
)
SELECT s.context_name, s.kind, s.namespace, s.name, s.uid
FROM pod_specs s
WHERE EXISTS (
    SELECT 1 FROM jsonb_array_elements(COALESCE(s.pod->'securityContext'->'sysctls', '[]')) AS sc
    WHERE sc->>'name' NOT IN (
      'kernel.shm_rmid_forced', 'net.ipv4.ip_local_port_range', 'net.ipv4.ip_unprivileged_port_start',
      'net.ipv4.tcp_syncookies', 'net.ipv4.ping_group_range', 'net.ipv4.ip_local_reserved_ports',
      'net.ipv4.tcp_keepalive_time', 'net.ipv4.tcp_fin_timeout', 'net.ipv4.tcp_keepalive_intvl',
      'net.ipv4.tcp_keepalive_probes'));
