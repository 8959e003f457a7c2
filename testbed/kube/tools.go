//go:build tools

// Package tools pins the binaries this wrapper builds: the control plane (etcd,
// kube-apiserver) and the live test bed's controllers and scheduler (testbed/live.py).
package tools

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
)
