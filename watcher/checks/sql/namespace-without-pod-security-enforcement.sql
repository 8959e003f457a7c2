-- id: namespace-without-pod-security-enforcement
-- title: Namespaces that do not enforce the baseline or restricted Pod Security Standard
-- severity: medium
-- frameworks: nsa-cisa, pss-baseline, pss-restricted
-- section: NSA/CISA v1.2 "Kubernetes Pod security: Pod security enforcement"; PSS "Pod Security Admission"
-- remediation: Label the namespace pod-security.kubernetes.io/enforce=restricted (or baseline).
--
-- Returns one row per offending object: context_name, kind, namespace, name, uid.
SELECT n.context_name, 'Namespace' AS kind, n.namespace, n.name, n.uid
FROM k8s_namespaces n
WHERE COALESCE(n.labels->>'pod-security.kubernetes.io/enforce', 'privileged') NOT IN ('baseline', 'restricted');
