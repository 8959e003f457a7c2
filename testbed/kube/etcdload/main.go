// Command etcdload writes ConfigMaps straight into the etcd that backs a kube-apiserver,
// bypassing the API server's write path, so that its watch path delivers events to
// watchers at rates the API server could not accept as writes on a small machine.
//
// Each value is a complete JSON ConfigMap (apiVersion, kind, metadata with name,
// namespace, a stable UUID and creationTimestamp, a changing annotation, ~300 bytes of
// data) under <prefix>/configmaps/<namespace>/<name>, without resourceVersion: the API
// server's storage decoder recognises JSON and sets the resourceVersion from the etcd
// mod revision, as for objects it wrote itself.
//
// Phase 1 (untimed) creates every object that does not exist yet (a put guarded by
// create_revision == 0, so a second run against the same objects adds no events): ADDED
// events. Phase 2 updates them round-robin for -seconds, paced to -rate puts/s in total
// (0: as fast as possible): MODIFIED events. One JSON line with the figures of phase 2
// (and, separately, phase 1) goes to stdout; errors go to stderr.
//
// With -batch B > 1, each etcd transaction updates B distinct objects: one revision and
// one raft entry for B watch events, which takes much less CPU from etcd and from this
// generator per event. The B events then share a resourceVersion, which writes through
// the API server never produce; a watcher resuming from such a revision after a broken
// watch would not see the rest of that transaction.
package main

import (
	"context"
	"crypto/sha1"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

type objectMeta struct {
	Name              string            `json:"name"`
	Namespace         string            `json:"namespace"`
	UID               string            `json:"uid"`
	CreationTimestamp string            `json:"creationTimestamp"`
	Labels            map[string]string `json:"labels"`
	Annotations       map[string]string `json:"annotations"`
}

type configMap struct {
	APIVersion string            `json:"apiVersion"`
	Kind       string            `json:"kind"`
	Metadata   objectMeta        `json:"metadata"`
	Data       map[string]string `json:"data"`
}

// stableUUID derives a version-5 style UUID (RFC 4122 layout) from the object's key, so
// the same name keeps the same uid across puts and runs.
func stableUUID(key string) string {
	h := sha1.Sum([]byte("k8s-watcher/etcdload/" + key))
	h[6] = (h[6] & 0x0f) | 0x50
	h[8] = (h[8] & 0x3f) | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", h[0:4], h[4:6], h[6:8], h[8:10], h[10:16])
}

type generator struct {
	prefix, namespace string
	// created[i] is object i's creationTimestamp: this run's start for objects it
	// creates, the stored one for objects that already existed.
	created []string
}

func (g generator) name(i int) string { return fmt.Sprintf("etcdload-%d", i) }

func (g generator) key(i int) string {
	return strings.TrimSuffix(g.prefix, "/") + "/configmaps/" + g.namespace + "/" + g.name(i)
}

// value is the JSON ConfigMap for object i at sequence number seq.
func (g generator) value(i int, seq int64) (string, error) {
	cm := configMap{
		APIVersion: "v1",
		Kind:       "ConfigMap",
		Metadata: objectMeta{
			Name:              g.name(i),
			Namespace:         g.namespace,
			UID:               stableUUID(g.key(i)),
			CreationTimestamp: g.created[i],
			Labels:            map[string]string{"app": fmt.Sprintf("app-%d", i%50), "generator": "etcdload"},
			Annotations: map[string]string{
				"etcdload.k8s-watcher.io/seq":     strconv.FormatInt(seq, 10),
				"etcdload.k8s-watcher.io/written": time.Now().UTC().Format(time.RFC3339Nano),
			},
		},
		Data: map[string]string{
			"config.yaml": fmt.Sprintf(
				"service: app-%d\nreplicas: %d\nimage: registry.example/app-%d:1.%d\n"+
					"resources:\n  requests: {cpu: 100m, memory: 128Mi}\n  limits: {cpu: 500m, memory: 512Mi}\n"+
					"env:\n  LOG_LEVEL: info\n  FEATURE_FLAGS: alpha,beta,gamma\n  UPSTREAM: http://upstream-%d.svc:8080\n",
				i%50, i%5, i%50, i%9, i%20),
			"tier": []string{"web", "db", "cache"}[i%3],
		},
	}
	b, err := json.Marshal(cm)
	return string(b), err
}

type stats struct {
	puts, txns atomic.Int64
	errors     atomic.Int64
	existing   atomic.Int64
	mu         sync.Mutex
	firstRev   int64
	lastRev    int64
}

func (s *stats) record(puts int, rev int64) {
	s.puts.Add(int64(puts))
	s.txns.Add(1)
	s.mu.Lock()
	if s.firstRev == 0 || rev < s.firstRev {
		s.firstRev = rev
	}
	if rev > s.lastRev {
		s.lastRev = rev
	}
	s.mu.Unlock()
}

// put writes object i; with onlyCreate, only if the key does not exist (an existing
// key counts in st.existing and is left alone, but its creationTimestamp is kept for the
// updates).
func put(cli *clientv3.Client, g generator, i int, seq int64, onlyCreate bool, st *stats) {
	val, err := g.value(i, seq)
	if err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		key := g.key(i)
		if onlyCreate {
			var resp *clientv3.TxnResponse
			resp, err = cli.Txn(ctx).
				If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
				Then(clientv3.OpPut(key, val)).
				Else(clientv3.OpGet(key)).
				Commit()
			if err == nil && !resp.Succeeded {
				st.existing.Add(1)
				var old configMap
				if kvs := resp.Responses[0].GetResponseRange().GetKvs(); len(kvs) == 1 &&
					json.Unmarshal(kvs[0].Value, &old) == nil && old.Metadata.CreationTimestamp != "" {
					g.created[i] = old.Metadata.CreationTimestamp
				}
			} else if err == nil {
				st.record(1, resp.Header.Revision)
			}
		} else {
			var resp *clientv3.PutResponse
			resp, err = cli.Put(ctx, key, val)
			if err == nil {
				st.record(1, resp.Header.Revision)
			}
		}
		cancel()
		if err == nil {
			return
		}
	}
	if st.errors.Add(1) <= 5 {
		log.Printf("put %s: %v", g.key(i), err)
	}
}

// update writes puts first .. first+count-1 (object n % objects for put n) in one
// transaction: one etcd revision, count watch events.
func update(cli *clientv3.Client, g generator, first int64, count, objects int, st *stats) {
	if count == 1 {
		put(cli, g, int(first%int64(objects)), first+1, false, st)
		return
	}
	ops := make([]clientv3.Op, 0, count)
	for n := first; n < first+int64(count); n++ {
		i := int(n % int64(objects))
		val, err := g.value(i, n+1)
		if err != nil {
			log.Fatal(err)
		}
		ops = append(ops, clientv3.OpPut(g.key(i), val))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	resp, err := cli.Txn(ctx).Then(ops...).Commit()
	cancel()
	if err == nil {
		st.record(count, resp.Header.Revision)
	} else if st.errors.Add(int64(count)) <= int64(5*count) {
		log.Printf("txn of %d puts: %v", count, err)
	}
}

func main() {
	endpoint := flag.String("endpoint", "http://127.0.0.1:2379", "etcd client URL")
	prefix := flag.String("prefix", "/registry", "the API server's --etcd-prefix")
	namespace := flag.String("namespace", "etcdload", "namespace of the ConfigMaps")
	objects := flag.Int("objects", 2000, "number of distinct ConfigMaps")
	rate := flag.Float64("rate", 1000, "target updates per second in total; 0 = as fast as possible")
	seconds := flag.Float64("seconds", 10, "duration of the timed update phase")
	concurrency := flag.Int("concurrency", 16, "puts (or transactions, with -batch) in flight at most")
	batch := flag.Int("batch", 1, "updates per etcd transaction (distinct objects, one revision); 1 = plain puts")
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("etcdload: ")
	if *objects < 1 || *concurrency < 1 || *rate < 0 || *seconds <= 0 || *batch < 1 || *batch > *objects || *batch > 128 {
		log.Fatal("need -objects >= 1, -concurrency >= 1, -rate >= 0, -seconds > 0, 1 <= -batch <= min(-objects, 128)")
	}

	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{*endpoint}, DialTimeout: 10 * time.Second})
	if err != nil {
		log.Fatal(err)
	}
	defer cli.Close()
	g := generator{prefix: *prefix, namespace: *namespace, created: make([]string, *objects)}
	now := time.Now().UTC().Format(time.RFC3339)
	for i := range g.created {
		g.created[i] = now
	}

	// Phase 1, untimed: create the objects that do not exist yet.
	var created stats
	createStart := time.Now()
	var next atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < *concurrency; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= *objects {
					return
				}
				put(cli, g, i, 0, true, &created)
			}
		}()
	}
	wg.Wait()
	createSeconds := time.Since(createStart).Seconds()
	if created.errors.Load() > 0 {
		log.Fatalf("%d of %d creations failed", created.errors.Load(), *objects)
	}

	// Phase 2, timed: put n is due at start + n/rate; workers take the next due put (or
	// the next -batch puts), sleep until it is due and write object n % objects.
	// Concurrency bounds the writes in flight; a worker that falls behind catches up
	// without sleeping, but nothing is written after the deadline, so an offered rate
	// the machine cannot sustain shows as puts_per_s below target_rate.
	var updated stats
	next.Store(0)
	start := time.Now()
	deadline := start.Add(time.Duration(*seconds * float64(time.Second)))
	for w := 0; w < *concurrency; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				n := next.Add(int64(*batch)) - int64(*batch)
				due := time.Now()
				if *rate > 0 {
					due = start.Add(time.Duration(float64(n) / *rate * float64(time.Second)))
				}
				if !due.Before(deadline) || !time.Now().Before(deadline) {
					return
				}
				if d := time.Until(due); d > 0 {
					time.Sleep(d)
				}
				update(cli, g, n, *batch, *objects, &updated)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start).Seconds()

	out := map[string]any{
		"puts":                  updated.puts.Load(),
		"txns":                  updated.txns.Load(),
		"batch":                 *batch,
		"errors":                updated.errors.Load(),
		"seconds":               elapsed,
		"puts_per_s":            float64(updated.puts.Load()) / elapsed,
		"target_rate":           *rate,
		"first_revision":        updated.firstRev,
		"last_revision":         updated.lastRev,
		"objects":               *objects,
		"created":               created.puts.Load(),
		"existing":              created.existing.Load(),
		"create_seconds":        createSeconds,
		"create_first_revision": created.firstRev,
		"create_last_revision":  created.lastRev,
	}
	enc := json.NewEncoder(os.Stdout)
	if err := enc.Encode(out); err != nil {
		log.Fatal(err)
	}
	if updated.puts.Load() == 0 {
		os.Exit(1)
	}
}
