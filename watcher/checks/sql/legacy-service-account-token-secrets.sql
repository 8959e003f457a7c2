-- id: legacy-service-account-token-secrets
-- title: Long-lived service account token Secrets
-- severity: medium
-- frameworks: nsa-cisa
-- section: NSA/CISA v1.2 "Kubernetes Pod security: Protecting Pod service account tokens"
-- remediation: Delete the Secret and use short-lived projected tokens (TokenRequest) instead.
--
-- Returns one row per offending object: context_name, kind, namespace, name, uid.
SELECT context_name, 'Secret' AS kind, namespace, name, uid
FROM k8s_secrets
WHERE annotations ? 'kubernetes.io/service-account.name';
