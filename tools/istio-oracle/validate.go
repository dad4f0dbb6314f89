package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/hashicorp/go-multierror"
	"istio.io/istio/pilot/pkg/config/kube/crd"
	"istio.io/istio/pkg/config/schema/collection"
	"istio.io/istio/pkg/config/schema/collections"
	"istio.io/istio/pkg/config/schema/resource"
	"k8s.io/apiextensions-apiserver/pkg/apis/apiextensions"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	structuralschema "k8s.io/apiextensions-apiserver/pkg/apiserver/schema"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/schema/cel"
	structuraldefaulting "k8s.io/apiextensions-apiserver/pkg/apiserver/schema/defaulting"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/schema/pruning"
	apiservervalidation "k8s.io/apiextensions-apiserver/pkg/apiserver/validation"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation/field"
	celconfig "k8s.io/apiserver/pkg/apis/cel"
)

// Problem is one line of `validate` output.
type Problem struct {
	File, Object, Field, Message, By string
}

func (p Problem) String() string {
	return fmt.Sprintf("%s: %s: %s: %s [%s]", p.File, p.Object, p.Field, p.Message, p.By)
}

// Who says what, in the report's last column.
const (
	byWebhook = "istiod validation"  // pkg/config/validation, as the webhook runs it
	bySchema  = "CRD OpenAPI schema" // apiextensions-apiserver, as the API server runs it
	byCEL     = "CRD CEL rule"       // x-kubernetes-validations, Kubernetes' CEL validator
	byOracle  = "istio-oracle"
)

// crdVersion is what the API server holds for one served version of a CRD.
type crdVersion struct {
	structural *structuralschema.Structural
	validator  apiservervalidation.SchemaValidator
	cel        *cel.Validator
}

// crdIndex maps group/kind -> version -> schema, from Istio's own CRD file.
type crdIndex map[string]map[string]*crdVersion

func loadCRDs(path string) (crdIndex, error) {
	objs, err := readManifestFile(path)
	if err != nil {
		return nil, err
	}
	idx := crdIndex{}
	for _, o := range objs {
		if o.U.GetKind() != "CustomResourceDefinition" {
			continue
		}
		var c apiextensionsv1.CustomResourceDefinition
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.U.Object, &c); err != nil {
			return nil, fmt.Errorf("%s: %s: %w", path, o.U.GetName(), err)
		}
		gk := c.Spec.Group + "/" + c.Spec.Names.Kind
		idx[gk] = map[string]*crdVersion{}
		for _, v := range c.Spec.Versions {
			if !v.Served || v.Schema == nil || v.Schema.OpenAPIV3Schema == nil {
				continue
			}
			internal := &apiextensions.JSONSchemaProps{}
			if err := apiextensionsv1.Convert_v1_JSONSchemaProps_To_apiextensions_JSONSchemaProps(v.Schema.OpenAPIV3Schema, internal, nil); err != nil {
				return nil, fmt.Errorf("%s %s: %w", gk, v.Name, err)
			}
			ss, err := structuralschema.NewStructural(internal)
			if err != nil {
				return nil, fmt.Errorf("%s %s: structural schema: %w", gk, v.Name, err)
			}
			sv, _, err := apiservervalidation.NewSchemaValidator(internal)
			if err != nil {
				return nil, fmt.Errorf("%s %s: schema validator: %w", gk, v.Name, err)
			}
			idx[gk][v.Name] = &crdVersion{
				structural: ss,
				validator:  sv,
				cel:        cel.NewValidator(ss, true, celconfig.PerCallLimit),
			}
		}
	}
	if len(idx) == 0 {
		return nil, fmt.Errorf("%s: no CustomResourceDefinition", path)
	}
	return idx, nil
}

// validator runs the two checks a cluster with Istio runs on apply.
type validator struct {
	crds    crdIndex
	schemas collection.Schemas // what istiod's webhook validates (pilot/pkg/bootstrap/validation.go)
}

func newValidator(crdFile string) (*validator, error) {
	crds, err := loadCRDs(crdFile)
	if err != nil {
		return nil, err
	}
	return &validator{crds: crds, schemas: collections.PilotGatewayAPI()}, nil
}

// runValidate validates every object under dir; problems go to out, one per
// line; notes (skipped core kinds, the summary) go to notes.
func runValidate(dir, crdFile string, out, notes io.Writer) (int, error) {
	objs, err := readManifestDir(dir)
	if err != nil {
		return 0, err
	}
	v, err := newValidator(crdFile)
	if err != nil {
		return 0, err
	}
	var problems []Problem
	var skipped []string
	checked := 0
	for _, o := range objs {
		group := o.Group()
		switch {
		case isIstioGroup(group) || v.knows(o):
			checked++
			problems = append(problems, v.validate(o)...)
		case isCoreKubernetesGroup(group):
			skipped = append(skipped, o.Ref())
		default:
			checked++
			problems = append(problems, Problem{o.File, o.Ref(), "apiVersion", fmt.Sprintf("unknown kind %s %s: neither Istio nor core Kubernetes, not validated", o.U.GetAPIVersion(), o.U.GetKind()), byOracle})
		}
	}
	for _, p := range problems {
		fmt.Fprintln(out, p)
	}
	if len(skipped) > 0 {
		fmt.Fprintf(notes, "istio-oracle validate: skipped here, core Kubernetes kinds (kubernetes-validate checks them in tests/manifests): %s\n", strings.Join(skipped, ", "))
	}
	fmt.Fprintf(notes, "istio-oracle validate %s: %d Istio objects checked with istiod %s (its webhook validation, the CRDs' OpenAPI schema and CEL rules): %d problems\n",
		dir, checked, istioRelease(), len(problems))
	return len(problems), nil
}

func (v *validator) knows(o Object) bool {
	gvk := o.U.GroupVersionKind()
	_, ok := v.schemas.FindByGroupKind(resource.FromKubernetesGVK(&gvk))
	return ok
}

func (v *validator) validate(o Object) []Problem {
	var out []Problem
	out = append(out, v.validateWebhook(o)...)
	out = append(out, v.validateCRD(o)...)
	return out
}

// validateWebhook runs what istiod's validating webhook runs on the object
// (pkg/webhooks/validation/server/server.go validate): the schema lookup by
// group/kind, crd.ConvertObject, then the kind's ValidateConfig from
// pkg/config/validation.
func (v *validator) validateWebhook(o Object) []Problem {
	gvk := o.U.GroupVersionKind()
	s, ok := v.schemas.FindByGroupKind(resource.FromKubernetesGVK(&gvk))
	if !ok {
		return []Problem{{o.File, o.Ref(), "kind", fmt.Sprintf("unrecognized type %v", gvk), byWebhook}}
	}
	var obj crd.IstioKind
	if err := json.Unmarshal(o.JSON, &obj); err != nil {
		return []Problem{{o.File, o.Ref(), "spec", "cannot decode configuration: " + err.Error(), byWebhook}}
	}
	if obj.Namespace == "" {
		obj.Namespace = "default" // kubectl apply without -n
	}
	cfg, err := crd.ConvertObject(s, &obj, "cluster.local")
	if err != nil {
		return []Problem{{o.File, o.Ref(), "spec", "error decoding configuration: " + err.Error(), byWebhook}}
	}
	_, err = s.ValidateConfig(*cfg)
	if err == nil {
		return nil
	}
	var out []Problem
	for _, e := range splitErrors(err) {
		out = append(out, Problem{o.File, o.Ref(), "spec", e.Error(), byWebhook})
	}
	return out
}

// splitErrors flattens Istio's multierror (one line per error).
func splitErrors(err error) []error {
	var me *multierror.Error
	if errors.As(err, &me) {
		var out []error
		for _, e := range me.Errors {
			out = append(out, splitErrors(e)...)
		}
		return out
	}
	return []error{err}
}

// validateCRD runs what the API server runs on a custom resource: defaulting,
// pruning of unknown fields (kubectl's default --validate=strict refuses
// them), the OpenAPI schema, then the x-kubernetes-validations CEL rules.
func (v *validator) validateCRD(o Object) []Problem {
	gvk := o.U.GroupVersionKind()
	versions, ok := v.crds[gvk.Group+"/"+gvk.Kind]
	if !ok {
		return []Problem{{o.File, o.Ref(), "kind", fmt.Sprintf("no CustomResourceDefinition for %s in istio.io/istio %s", gvk.GroupKind(), istioVersion()), bySchema}}
	}
	cv, ok := versions[gvk.Version]
	if !ok {
		var served []string
		for name := range versions {
			served = append(served, name)
		}
		sort.Strings(served)
		return []Problem{{o.File, o.Ref(), "apiVersion", fmt.Sprintf("version %q is not served (served: %s)", gvk.Version, strings.Join(served, ", ")), bySchema}}
	}
	obj := runtime.DeepCopyJSON(o.U.Object)
	structuraldefaulting.Default(obj, cv.structural)
	var out []Problem
	unknown := pruning.PruneWithOptions(obj, cv.structural, true, structuralschema.UnknownFieldPathOptions{TrackUnknownFieldPaths: true})
	sort.Strings(unknown)
	for _, path := range unknown {
		out = append(out, Problem{o.File, o.Ref(), path, "unknown field", bySchema})
	}
	for _, e := range apiservervalidation.ValidateCustomResource(nil, obj, cv.validator) {
		out = append(out, fieldProblem(o, e, bySchema))
	}
	errs, _ := cv.cel.Validate(context.Background(), nil, cv.structural, obj, nil, celconfig.RuntimeCELCostBudget)
	for _, e := range errs {
		out = append(out, fieldProblem(o, e, byCEL))
	}
	return out
}

func fieldProblem(o Object, e *field.Error, by string) Problem {
	msg := e.ErrorBody()
	return Problem{o.File, o.Ref(), e.Field, msg, by}
}
