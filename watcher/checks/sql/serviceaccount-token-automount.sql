-- id: serviceaccount-token-automount
-- title: Service accounts whose token is mounted into pods by default
-- severity: low
-- frameworks: nsa-cisa
-- section: NSA/CISA v1.2 "Kubernetes Pod security: Protecting Pod service account tokens"
-- remediation: Set automountServiceAccountToken: false on the service account; let the pods that need it opt in.
--
-- Returns one row per offending object: context_name, kind, namespace, name, uid.
SELECT context_name, 'ServiceAccount' AS kind, namespace, name, uid
FROM k8s_serviceaccounts
WHERE automount_service_account_token IS DISTINCT FROM false;
