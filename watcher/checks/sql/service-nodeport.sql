-- id: service-nodeport
-- title: Services of type NodePort
-- severity: low
-- frameworks: nsa-cisa
-- section: NSA/CISA v1.2 "Network separation and hardening"
-- remediation: Expose services through an Ingress or a LoadBalancer you control; a NodePort opens every node.
--
-- Returns one row per offending object: context_name, kind, namespace, name, uid.
SELECT context_name, 'Service' AS kind, namespace, name, uid
FROM k8s_services
WHERE type = 'NodePort';
