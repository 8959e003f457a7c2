-- id: service-loadbalancer
-- title: Services of type LoadBalancer
-- severity: low
-- frameworks: nsa-cisa
-- section: NSA/CISA v1.2 "Network separation and hardening"
-- remediation: Check that the service should be reachable from outside the cluster; restrict loadBalancerSourceRanges.
--
-- Returns one row per offending object: context_name, kind, namespace, name, uid.
SELECT context_name, 'Service' AS kind, namespace, name, uid
FROM k8s_services
WHERE type = 'LoadBalancer';
