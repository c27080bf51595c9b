// Command validate checks leadscore's deployment files with the libraries the real tools use
// (scripts/test-ops runs it; there is no Docker engine or Kubernetes API server in CI):
//
//	validate compose FILE   Docker Compose's own loader (compose-go: the Compose Specification's
//	                        JSON schema, interpolation, YAML merge keys, references between
//	                        services). Prints the normalized project as JSON; on an error prints
//	                        it and exits 1.
//	validate dockerfile FILE
//	                        BuildKit's own Dockerfile parser, instruction parser and linter (the
//	                        build checks of `docker build --check`). Prints the stages and their
//	                        instructions, and the lint warnings, as JSON; exits 1 on a parse error.
//	validate crd FILE...    Each YAML document strict-decoded into its Go API type: the Prometheus
//	                        Operator's PodMonitor, ServiceMonitor and PrometheusRule. An unknown
//	                        or misspelt field, or a wrong type, is an error. Prints one JSON object per document (kind, name, and the object
//	                        as decoded), or the error and exits 1.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/linter"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"sigs.k8s.io/yaml"
)

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: validate compose FILE | validate dockerfile FILE | validate crd FILE...")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "compose":
		err = compose(os.Args[2])
	case "dockerfile":
		err = dockerfile(os.Args[2])
	case "crd":
		for _, f := range os.Args[2:] {
			if err = crds(f); err != nil {
				break
			}
		}
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "validate:", err)
		os.Exit(1)
	}
}

func compose(file string) error {
	abs, err := filepath.Abs(file)
	if err != nil {
		return err
	}
	// No environment from the caller: ${VAR:-default} takes its default, as on a machine where
	// the user set nothing, so the result does not depend on the CI runner's variables.
	opts, err := cli.NewProjectOptions([]string{abs},
		cli.WithWorkingDirectory(filepath.Dir(abs)),
		cli.WithEnv([]string{}),
		cli.WithName("leadscore"),
	)
	if err != nil {
		return err
	}
	project, err := opts.LoadProject(context.Background())
	if err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	out, err := project.MarshalJSON()
	if err != nil {
		return err
	}
	fmt.Println(string(out))
	return nil
}

// documents splits a multi-document YAML stream on lines that are exactly "---".
func documents(data []byte) [][]byte {
	var docs [][]byte
	var cur bytes.Buffer
	flush := func() {
		if strings.TrimSpace(stripComments(cur.String())) != "" {
			docs = append(docs, append([]byte(nil), cur.Bytes()...))
		}
		cur.Reset()
	}
	for _, line := range strings.SplitAfter(string(data), "\n") {
		if strings.TrimRight(line, " \r\n") == "---" {
			flush()
			continue
		}
		cur.WriteString(line)
	}
	flush()
	return docs
}

func stripComments(s string) string {
	var b strings.Builder
	for _, line := range strings.Split(s, "\n") {
		if t := strings.TrimSpace(line); t != "" && !strings.HasPrefix(t, "#") {
			b.WriteString(line)
			b.WriteString("\n")
		}
	}
	return b.String()
}

func crds(file string) error {
	data, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	for i, doc := range documents(data) {
		var meta struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
		}
		if err := yaml.Unmarshal(doc, &meta); err != nil {
			return fmt.Errorf("%s: document %d: %w", file, i+1, err)
		}
		var obj interface{}
		var want string
		switch meta.Kind {
		case "PodMonitor":
			obj, want = &monitoringv1.PodMonitor{}, monitoringv1.SchemeGroupVersion.String()
		case "ServiceMonitor":
			obj, want = &monitoringv1.ServiceMonitor{}, monitoringv1.SchemeGroupVersion.String()
		case "PrometheusRule":
			obj, want = &monitoringv1.PrometheusRule{}, monitoringv1.SchemeGroupVersion.String()
		default:
			return fmt.Errorf("%s: document %d: kind %q is not one this validator knows", file, i+1, meta.Kind)
		}
		if meta.APIVersion != want {
			return fmt.Errorf("%s: document %d: %s has apiVersion %q, want %q", file, i+1, meta.Kind, meta.APIVersion, want)
		}
		if err := yaml.UnmarshalStrict(doc, obj); err != nil {
			return fmt.Errorf("%s: document %d (%s): %w", file, i+1, meta.Kind, err)
		}
		out, err := json.Marshal(map[string]interface{}{"file": file, "kind": meta.Kind, "object": obj})
		if err != nil {
			return err
		}
		fmt.Println(string(out))
	}
	return nil
}

type lintWarning struct {
	Rule    string `json:"rule"`
	Message string `json:"message"`
	Line    int    `json:"line"`
}

type instruction struct {
	Name     string      `json:"name"`
	Line     int         `json:"line"`
	Original string      `json:"original"`
	Command  interface{} `json:"command"`
}

type stage struct {
	Name         string        `json:"name"`
	Base         string        `json:"base"`
	Instructions []instruction `json:"instructions"`
}

func dockerfile(file string) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	ast, err := parser.Parse(f)
	if err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	var warnings []lintWarning
	for _, w := range ast.Warnings {
		line := 0
		if w.Location != nil {
			line = w.Location.Start.Line
		}
		warnings = append(warnings, lintWarning{Rule: w.URL, Message: w.Short, Line: line})
	}
	lint := linter.New(&linter.Config{Warn: func(rule, _, _, msg string, loc []parser.Range) {
		line := 0
		if len(loc) > 0 {
			line = loc[0].Start.Line
		}
		warnings = append(warnings, lintWarning{Rule: rule, Message: msg, Line: line})
	}})
	stages, _, err := instructions.Parse(ast.AST, lint)
	if err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	var out []stage
	for _, s := range stages {
		st := stage{Name: s.Name, Base: s.BaseName}
		for _, c := range s.Commands {
			line := 0
			if loc := c.Location(); len(loc) > 0 {
				line = loc[0].Start.Line
			}
			orig := ""
			if sc, ok := c.(fmt.Stringer); ok {
				orig = sc.String()
			}
			st.Instructions = append(st.Instructions, instruction{Name: c.Name(), Line: line, Original: orig, Command: c})
		}
		out = append(out, st)
	}
	b, err := json.Marshal(map[string]interface{}{"stages": out, "warnings": warnings})
	if err != nil {
		return err
	}
	fmt.Println(string(b))
	return nil
}
