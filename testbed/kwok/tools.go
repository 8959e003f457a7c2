//go:build tools

// Package tools pins kwok, the simulated nodes and kubelets of the live test bed
// (testbed/live.py). It is a module of its own because kwok v0.8.0 builds against the
// k8s.io libraries v0.36, while testbed/kube pins every staging module at v0.37.
package tools

import (
	_ "sigs.k8s.io/kwok/cmd/kwok"
)
