package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"istio.io/istio/pilot/pkg/config/kube/crd"
	"istio.io/istio/pilot/pkg/model"
	"istio.io/istio/pilot/test/xds"
	"istio.io/istio/pkg/config"
	"istio.io/istio/pkg/config/schema/collections"
	"istio.io/istio/pkg/config/schema/resource"
	istiolog "istio.io/istio/pkg/log"
	"istio.io/istio/pkg/test"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
)

const (
	namespace   = "default"
	clusterName = "Kubernetes" // istiod's default cluster ID
	domain      = "cluster.local"
)

// Rendering is the JSON contract shared with `mesh render` (Rust): what each
// sidecar would receive, Envoy resources as protojson with proto field names.
type Rendering struct {
	Experiment string        `json:"experiment"`
	Source     string        `json:"source"`
	Client     SidecarConfig `json:"client"`
	Server     SidecarConfig `json:"server"`
}

type SidecarConfig struct {
	Listeners        []json.RawMessage `json:"listeners"`
	Routes           []json.RawMessage `json:"routes"`
	Clusters         []json.RawMessage `json:"clusters"`
	ExtensionConfigs []json.RawMessage `json:"extension_configs,omitempty"`
}

func cmdRender(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("render", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("istio-dir", "istio", "manifest directory laid out like istio/")
	experiment := fs.String("experiment", "none", "none, or a file name (without .yaml) in ISTIO_DIR/destinationrules/")
	pods := fs.Int("pods", 3, "server pods (each with an endpoint)")
	outFile := fs.String("out", "", "output JSON file (default: stdout)")
	if pos, err := parseFlags(fs, args); err != nil || len(pos) != 0 || *pods < 1 {
		fmt.Fprint(stderr, usage)
		return exUsage
	}
	quietIstioLogs()
	r, err := render(*dir, *experiment, *pods)
	if err != nil {
		fmt.Fprintln(stderr, "error:", err)
		return 1
	}
	js, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		fmt.Fprintln(stderr, "error:", err)
		return 1
	}
	js = append(js, '\n')
	if *outFile == "" {
		_, _ = stdout.Write(js)
		return 0
	}
	if err := os.MkdirAll(filepath.Dir(*outFile), 0o755); err != nil {
		fmt.Fprintln(stderr, "error:", err)
		return 1
	}
	if err := os.WriteFile(*outFile, js, 0o644); err != nil {
		fmt.Fprintln(stderr, "error:", err)
		return 1
	}
	fmt.Fprintf(stderr, "istio-oracle render: %s (%s, %d server pods) -> %s\n", *experiment, r.Source, *pods, *outFile)
	return 0
}

// quietIstioLogs: istiod's packages log at info; keep stderr for errors.
// The default scope is silenced: in-process, its only errors are the fake
// Kubernetes client's Gateway API CRDs lacking a bundle-version annotation
// (pkg/kube/kclient/crdwatcher.go), which concerns no sidecar. What render
// needs is checked on its output instead (every expected resource present).
func quietIstioLogs() {
	_ = istiolog.Configure(istiolog.DefaultOptions())
	for _, s := range istiolog.Scopes() {
		s.SetOutputLevel(istiolog.ErrorLevel)
	}
	if s := istiolog.FindScope(istiolog.DefaultScopeName); s != nil {
		s.SetOutputLevel(istiolog.NoneLevel)
	}
}

// inputs is what istiod is fed for one experiment.
type inputs struct {
	kube    []runtime.Object
	configs []config.Config
	server  *appsv1.Deployment
	client  *appsv1.Deployment
	svc     *corev1.Service // the Service clients dial: "server"
	podIPs  []string
}

func render(dir, experiment string, pods int) (*Rendering, error) {
	in, err := loadInputs(dir, experiment, pods)
	if err != nil {
		return nil, err
	}
	out := &Rendering{Experiment: experiment, Source: "istiod " + istioRelease()}
	err = test.Wrap(func(t test.Failer) {
		s := xds.NewFakeDiscoveryServer(t, xds.FakeOptions{
			KubernetesObjects: in.kube,
			Configs:           in.configs,
		})
		client := s.SetupProxy(proxyFor(in.client, "client-grpc-0", clientIP))
		server := s.SetupProxy(proxyFor(in.server, podName(in.server, 0), in.podIPs[0]))
		var rerr error
		if out.Client, rerr = renderClient(s, client, in.svc); rerr != nil {
			t.Fatal(rerr)
		}
		if out.Server, rerr = renderServer(s, server, in); rerr != nil {
			t.Fatal(rerr)
		}
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

const clientIP = "10.244.1.10"

func podName(d *appsv1.Deployment, i int) string { return fmt.Sprintf("%s-%d", d.Name, i) }

func proxyFor(d *appsv1.Deployment, name, ip string) *model.Proxy {
	labels := d.Spec.Template.Labels
	return &model.Proxy{
		ID:              name + "." + namespace,
		IPAddresses:     []string{ip},
		Labels:          labels,
		ConfigNamespace: namespace,
		Metadata: &model.NodeMetadata{
			Namespace:    namespace,
			Labels:       labels,
			WorkloadName: d.Name,
			ClusterID:    clusterName,
			IstioVersion: proxyIstioVersion(),
		},
	}
}

// renderClient: the outbound listeners on the Service's ports, the route
// configurations they name, and the Service's outbound clusters.
func renderClient(s *xds.FakeDiscoveryServer, p *model.Proxy, svc *corev1.Service) (SidecarConfig, error) {
	ports := map[uint32]bool{}
	wantClusters := map[string]bool{}
	fqdn := svc.Name + "." + svc.Namespace + ".svc." + domain
	for _, sp := range svc.Spec.Ports {
		ports[uint32(sp.Port)] = true
		wantClusters[fmt.Sprintf("outbound|%d||%s", sp.Port, fqdn)] = true
	}
	var ls []*listener.Listener
	for _, l := range s.Listeners(p) {
		if ports[l.GetAddress().GetSocketAddress().GetPortValue()] && l.GetTrafficDirection() == core.TrafficDirection_OUTBOUND {
			ls = append(ls, l)
		}
	}
	out, err := sidecarResources(s, p, ls, wantClusters)
	if err != nil {
		return out, err
	}
	if len(out.Listeners) == 0 || len(out.Clusters) != len(wantClusters) {
		return out, fmt.Errorf("client sidecar: istiod rendered %d listeners and %d of the clusters %v", len(out.Listeners), len(out.Clusters), keys(wantClusters))
	}
	return out, nil
}

// sidecarResources marshals what both sidecars are compared on: the
// listeners, the routes they name through RDS, and the wanted clusters.
func sidecarResources(s *xds.FakeDiscoveryServer, p *model.Proxy, ls []*listener.Listener, wantClusters map[string]bool) (SidecarConfig, error) {
	var out SidecarConfig
	var err error
	if out.Listeners, err = marshalAll(ls); err != nil {
		return out, err
	}
	if out.Routes, err = marshalAll(s.RoutesFromListeners(p, ls)); err != nil {
		return out, err
	}
	out.Clusters, err = marshalAll(pickClusters(s.Clusters(p), wantClusters))
	return out, err
}

// renderServer: virtualInbound, its RDS routes if any, the inbound clusters
// and the ECDS resources the inbound HTTP connection managers name.
func renderServer(s *xds.FakeDiscoveryServer, p *model.Proxy, in *inputs) (SidecarConfig, error) {
	var ls []*listener.Listener
	for _, l := range s.Listeners(p) {
		if l.GetName() == "virtualInbound" {
			ls = append(ls, l)
		}
	}
	wantClusters := map[string]bool{}
	for _, tp := range targetPorts(in.svc, in.server) {
		wantClusters[fmt.Sprintf("inbound|%d||", tp)] = true
	}
	out, err := sidecarResources(s, p, ls, wantClusters)
	if err != nil {
		return out, err
	}
	ecds := s.ConfigGen.BuildExtensionConfiguration(p, s.PushContext(), ecdsNames(ls), nil)
	if out.ExtensionConfigs, err = marshalAll(ecds); err != nil {
		return out, err
	}
	if len(out.Listeners) != 1 || len(out.Clusters) != len(wantClusters) {
		return out, fmt.Errorf("server sidecar: istiod rendered %d virtualInbound listeners and %d of the clusters %v", len(out.Listeners), len(out.Clusters), keys(wantClusters))
	}
	return out, nil
}

func pickClusters(all []*cluster.Cluster, want map[string]bool) []*cluster.Cluster {
	var out []*cluster.Cluster
	for _, c := range all {
		if want[c.GetName()] {
			out = append(out, c)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].GetName() < out[j].GetName() })
	return out
}

// ecdsNames: the resource names the listeners' HTTP filters fetch by ECDS.
func ecdsNames(ls []*listener.Listener) []string {
	seen := map[string]bool{}
	var names []string
	for _, l := range ls {
		for _, fc := range l.GetFilterChains() {
			for _, f := range fc.GetFilters() {
				h := &hcm.HttpConnectionManager{}
				if f.GetTypedConfig() == nil || f.GetTypedConfig().UnmarshalTo(h) != nil {
					continue
				}
				for _, hf := range h.GetHttpFilters() {
					if cd := hf.GetConfigDiscovery(); cd != nil && !seen[hf.GetName()] {
						seen[hf.GetName()] = true
						names = append(names, hf.GetName())
					}
				}
			}
		}
	}
	return names
}

var marshaler = protojson.MarshalOptions{UseProtoNames: true}

func marshalAll[T proto.Message](msgs []T) ([]json.RawMessage, error) {
	out := make([]json.RawMessage, 0, len(msgs))
	for _, m := range msgs {
		js, err := marshaler.Marshal(m)
		if err != nil {
			return nil, err
		}
		var buf bytes.Buffer
		if err := json.Compact(&buf, js); err != nil {
			return nil, err
		}
		out = append(out, buf.Bytes())
	}
	return out, nil
}

func keys(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// ---- inputs ----------------------------------------------------------------

// loadInputs reads what a cluster would hold: the Services and Deployments of
// DIR/base (server.yaml, client-grpc.yaml), N server pods with their
// EndpointSlices, the Istio objects of DIR (VirtualServices, WasmPlugin,
// Sidecar, ...) except DIR/destinationrules/, and the DestinationRule under
// test.
func loadInputs(dir, experiment string, pods int) (*inputs, error) {
	in := &inputs{}
	base, err := readManifestDir(filepath.Join(dir, "base"))
	if err != nil {
		return nil, err
	}
	var services []*corev1.Service
	deployments := map[string]*appsv1.Deployment{}
	for _, o := range base {
		switch o.U.GetKind() {
		case "Service":
			svc := &corev1.Service{}
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.U.Object, svc); err != nil {
				return nil, fmt.Errorf("%s: %s: %w", o.File, o.Ref(), err)
			}
			services = append(services, svc)
		case "Deployment":
			d := &appsv1.Deployment{}
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.U.Object, d); err != nil {
				return nil, fmt.Errorf("%s: %s: %w", o.File, o.Ref(), err)
			}
			deployments[d.Name] = d
		}
	}
	in.server, in.client = deployments["server"], deployments["client-grpc"]
	if in.server == nil || in.client == nil {
		return nil, fmt.Errorf("%s/base: needs the Deployments server and client-grpc", dir)
	}
	for i, svc := range services {
		if svc.Namespace == "" {
			svc.Namespace = namespace
		}
		if svc.Spec.ClusterIP == "" {
			svc.Spec.ClusterIP = fmt.Sprintf("10.96.0.%d", 10+i)
		}
		if svc.Name == "server" {
			in.svc = svc
		}
		in.kube = append(in.kube, svc)
	}
	if in.svc == nil {
		return nil, fmt.Errorf("%s/base: no Service named server", dir)
	}
	for i := 0; i < pods; i++ {
		ip := fmt.Sprintf("10.244.0.%d", 10+i)
		in.podIPs = append(in.podIPs, ip)
		in.kube = append(in.kube, pod(in.server, podName(in.server, i), ip))
	}
	in.kube = append(in.kube, pod(in.client, "client-grpc-0", clientIP))
	for _, svc := range services {
		if selects(svc, in.server) {
			in.kube = append(in.kube, endpointSlice(svc, in.server, in.podIPs))
		}
	}

	objs, err := readManifestDir(dir)
	if err != nil {
		return nil, err
	}
	drDir := filepath.Join(dir, "destinationrules")
	for _, o := range objs {
		if !isIstioGroup(o.Group()) || filepath.Dir(o.File) == drDir {
			continue
		}
		cfg, err := toConfig(o)
		if err != nil {
			return nil, err
		}
		in.configs = append(in.configs, cfg)
	}
	if experiment != "none" {
		file := filepath.Join(drDir, experiment+".yaml")
		drs, err := readManifestFile(file)
		if err != nil {
			return nil, fmt.Errorf("experiment %q: %w", experiment, err)
		}
		for _, o := range drs {
			cfg, err := toConfig(o)
			if err != nil {
				return nil, err
			}
			in.configs = append(in.configs, cfg)
		}
	}
	return in, nil
}

// toConfig converts an Istio object as istiod's Kubernetes config store does.
func toConfig(o Object) (config.Config, error) {
	gvk := o.U.GroupVersionKind()
	s, ok := collections.PilotGatewayAPI().FindByGroupKind(resource.FromKubernetesGVK(&gvk))
	if !ok {
		return config.Config{}, fmt.Errorf("%s: %s: istiod does not know %s", o.File, o.Ref(), gvk)
	}
	var obj crd.IstioKind
	if err := json.Unmarshal(o.JSON, &obj); err != nil {
		return config.Config{}, fmt.Errorf("%s: %s: %w", o.File, o.Ref(), err)
	}
	if obj.Namespace == "" {
		obj.Namespace = namespace
	}
	cfg, err := crd.ConvertObject(s, &obj, domain)
	if err != nil {
		return config.Config{}, fmt.Errorf("%s: %s: %w", o.File, o.Ref(), err)
	}
	return *cfg, nil
}

func pod(d *appsv1.Deployment, name, ip string) *corev1.Pod {
	tmpl := d.Spec.Template
	return &corev1.Pod{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace, Labels: tmpl.Labels, Annotations: tmpl.Annotations},
		Spec:       tmpl.Spec,
		Status: corev1.PodStatus{
			Phase:      corev1.PodRunning,
			PodIP:      ip,
			PodIPs:     []corev1.PodIP{{IP: ip}},
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}},
		},
	}
}

func selects(svc *corev1.Service, d *appsv1.Deployment) bool {
	if len(svc.Spec.Selector) == 0 {
		return false
	}
	for k, v := range svc.Spec.Selector {
		if d.Spec.Template.Labels[k] != v {
			return false
		}
	}
	return true
}

// containerPort resolves a Service targetPort (number or name) on the pod.
func containerPort(tp intstr.IntOrString, d *appsv1.Deployment) int32 {
	if tp.Type == intstr.Int {
		return tp.IntVal
	}
	for _, c := range d.Spec.Template.Spec.Containers {
		for _, p := range c.Ports {
			if p.Name == tp.StrVal {
				return p.ContainerPort
			}
		}
	}
	if n, err := strconv.Atoi(tp.StrVal); err == nil {
		return int32(n)
	}
	return 0
}

func targetPorts(svc *corev1.Service, d *appsv1.Deployment) []int32 {
	var out []int32
	for _, sp := range svc.Spec.Ports {
		tp := sp.TargetPort
		if tp.Type == intstr.Int && tp.IntVal == 0 {
			tp = intstr.FromInt32(sp.Port)
		}
		out = append(out, containerPort(tp, d))
	}
	return out
}

// endpointSlice is what Kubernetes' EndpointSlice controller writes for svc:
// every ready pod, the Service's ports resolved to container ports.
func endpointSlice(svc *corev1.Service, d *appsv1.Deployment, ips []string) *discoveryv1.EndpointSlice {
	es := &discoveryv1.EndpointSlice{
		TypeMeta: metav1.TypeMeta{APIVersion: "discovery.k8s.io/v1", Kind: "EndpointSlice"},
		ObjectMeta: metav1.ObjectMeta{
			Name: svc.Name + "-slice", Namespace: namespace,
			Labels: map[string]string{discoveryv1.LabelServiceName: svc.Name},
		},
		AddressType: discoveryv1.AddressTypeIPv4,
	}
	tps := targetPorts(svc, d)
	for i, sp := range svc.Spec.Ports {
		name, proto, port, appProto := sp.Name, sp.Protocol, tps[i], sp.AppProtocol
		es.Ports = append(es.Ports, discoveryv1.EndpointPort{Name: &name, Protocol: &proto, Port: &port, AppProtocol: appProto})
	}
	ready := true
	for i, ip := range ips {
		es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{
			Addresses:  []string{ip},
			Conditions: discoveryv1.EndpointConditions{Ready: &ready},
			TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: namespace, Name: podName(d, i)},
		})
	}
	return es
}

// istioRelease names the pinned istiod: the release line from the module's
// VERSION file and the module version.
func istioRelease() string {
	return fmt.Sprintf("%s (istio.io/istio %s)", releaseLine(), istioVersion())
}

func releaseLine() string {
	dir, err := istioModuleDir()
	if err != nil {
		return "unknown"
	}
	v, err := os.ReadFile(filepath.Join(dir, "VERSION"))
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(v))
}

// proxyIstioVersion: the sidecars run the same release as istiod.
func proxyIstioVersion() string {
	if l := releaseLine(); l != "unknown" {
		return l + ".0"
	}
	return ""
}
