-- id: service-external-ips
-- title: Services with externalIPs
-- severity: medium
-- frameworks: nsa-cisa
-- section: NSA/CISA v1.2 "Network separation and hardening"
-- remediation: Remove spec.externalIPs (CVE-2020-8554) or deny them with the DenyServiceExternalIPs admission plugin.
--
-- Returns one row per offending object: context_name, kind, namespace, name, uid.
SELECT context_name, 'Service' AS kind, namespace, name, uid
FROM k8s_services
WHERE cardinality(external_ips) > 0;
