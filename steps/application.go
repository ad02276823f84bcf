package steps

// Application family: the workspace operator (namespace, ServiceAccount,
// RBAC, Deployment guildnet-system/workspace-operator) and the host app's
// settings file (~/.guildnet/config.json) on the hostapp node.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/guildnet/metaguildnet/messages"
)

// Application defaults, as GuildNet has them.
const (
	DefaultOperatorNamespace = "guildnet-system"
	DefaultOperatorName      = "workspace-operator"
	DefaultOperatorImage     = "ghcr.io/guildnet/workspace-operator:latest"
	DefaultHostAppListen     = "127.0.0.1:8090"
	// MaxHostAppConfig bounds the host app config file setup reads.
	MaxHostAppConfig = 1 << 20
	// hostAppBackupSuffix names the copy of the previous config that Undo
	// restores (kept beside it, same mode; never in the run record).
	hostAppBackupSuffix = ".metaguildnet-prev"
)

var (
	appGVRNamespaces          = schema.GroupVersionResource{Version: "v1", Resource: "namespaces"}
	appGVRServiceAccounts     = schema.GroupVersionResource{Version: "v1", Resource: "serviceaccounts"}
	appGVRClusterRoles        = schema.GroupVersionResource{Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "clusterroles"}
	appGVRClusterRoleBindings = schema.GroupVersionResource{Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "clusterrolebindings"}
)

// ApplicationSteps are the application family, in run order.
func ApplicationSteps() []Step {
	return []Step{
		{
			Name:        "workspace_operator",
			Layer:       messages.LayerApplication,
			Description: "the workspace operator: namespace, ServiceAccount, RBAC and Deployment guildnet-system/workspace-operator, available",
			Scope:       ScopeCluster,
			Critical:    true,
			Prereqs:     appKubePrereq,
			Plan:        func(ctx context.Context, env *Env) (Plan, error) { return appPlanStep(ctx, env, operatorObjects) },
			Apply:       func(ctx context.Context, env *Env) (Applied, error) { return appApplyStep(ctx, env, operatorObjects) },
			Undo:        appUndoStep(operatorObjects),
		},
		{
			Name:        "hostapp_config",
			Layer:       messages.LayerApplication,
			Description: "the host app's config.json (listen_local, name, login_server, hostname) matches the spec",
			Scope:       ScopeNode,
			Roles:       []string{messages.RoleHostApp},
			Plan:        planHostAppConfig,
			Apply:       applyHostAppConfig,
			Undo:        undoHostAppConfig,
		},
	}
}

func operatorObjects(env *Env) ([]appObject, error) {
	s := env.Spec.Application.Operator
	ns := s.Namespace
	if ns == "" {
		ns = DefaultOperatorNamespace
	}
	image := s.Image
	if image == "" {
		image = DefaultOperatorImage
	}
	replicas := int64(1)
	if s.Replicas != nil {
		if *s.Replicas < 0 {
			return nil, Configf("set application.operator.replicas to 0 or more", "application.operator.replicas is %d", *s.Replicas)
		}
		replicas = int64(*s.Replicas)
	}
	name := DefaultOperatorName
	labels := map[string]any{"app": name, "app.kubernetes.io/managed-by": appFieldManager}
	all := []any{"get", "list", "watch", "create", "update", "patch", "delete"}
	objs := []appObject{
		// The namespace may be the cluster layer's too (addons.namespaces):
		// made when missing, never re-applied.
		{GVR: appGVRNamespaces, EnsureOnly: true, Obj: appU(map[string]any{
			"apiVersion": "v1", "kind": "Namespace",
			"metadata": map[string]any{"name": ns},
		})},
		{GVR: appGVRServiceAccounts, Obj: appU(map[string]any{
			"apiVersion": "v1", "kind": "ServiceAccount",
			"metadata": map[string]any{"name": name, "namespace": ns, "labels": labels},
		})},
		{GVR: appGVRClusterRoles, Obj: appU(map[string]any{
			"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
			"metadata": map[string]any{"name": name, "labels": labels},
			"rules": []any{
				map[string]any{"apiGroups": []any{"guildnet.io"}, "resources": []any{"workspaces", "workspaces/status", "capabilities"}, "verbs": all},
				map[string]any{"apiGroups": []any{"apps"}, "resources": []any{"deployments"}, "verbs": all},
				map[string]any{"apiGroups": []any{""}, "resources": []any{"services", "pods", "configmaps", "secrets"}, "verbs": all},
				map[string]any{"apiGroups": []any{""}, "resources": []any{"events"}, "verbs": []any{"create", "patch"}},
				map[string]any{"apiGroups": []any{"coordination.k8s.io"}, "resources": []any{"leases"}, "verbs": all},
			},
		})},
		{GVR: appGVRClusterRoleBindings, Obj: appU(map[string]any{
			"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
			"metadata": map[string]any{"name": name, "labels": labels},
			"roleRef":  map[string]any{"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
			"subjects": []any{map[string]any{"kind": "ServiceAccount", "name": name, "namespace": ns}},
		})},
		{GVR: appGVRDeployments, Obj: appU(map[string]any{
			"apiVersion": "apps/v1", "kind": "Deployment",
			"metadata": map[string]any{"name": name, "namespace": ns, "labels": labels},
			"spec": map[string]any{
				"replicas": replicas,
				"selector": map[string]any{"matchLabels": map[string]any{"app": name}},
				"template": map[string]any{
					"metadata": map[string]any{"labels": map[string]any{"app": name}},
					"spec": map[string]any{
						"serviceAccountName": name,
						"containers": []any{map[string]any{
							"name": "operator", "image": image,
							"env": []any{map[string]any{"name": "WATCH_NAMESPACE", "value": ""}},
						}},
					},
				},
			},
		})},
	}
	return objs, nil
}

// hostAppKeys are the config keys setup owns; any other key in the file
// is kept as it is.
var hostAppKeys = []string{"listen_local", "name", "login_server", "hostname", "auth_key"}

// hostAppPath is where the host app reads its config.
func hostAppPath(env *Env) (string, error) {
	if p := env.Spec.Application.HostApp.ConfigPath; p != "" {
		if !filepath.IsAbs(p) {
			return "", Configf("give application.hostApp.configPath as an absolute path", "application.hostApp.configPath %q is relative", p)
		}
		return filepath.Clean(p), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", Configf("set application.hostApp.configPath", "no home directory for ~/.guildnet/config.json: %w", err)
	}
	return filepath.Join(home, ".guildnet", "config.json"), nil
}

// hostAppWanted is the managed part of the config, and whether it holds a
// secret (then the file is 0600).
func hostAppWanted(env *Env) (map[string]string, bool, error) {
	s := env.Spec.Application.HostApp
	listen := s.ListenLocal
	if listen == "" {
		listen = DefaultHostAppListen
	}
	name := s.Name
	if name == "" {
		name = env.Cluster
	}
	hostname := env.Node
	for _, n := range env.Spec.Nodes {
		if n.Name == env.Node && n.Hostname != "" {
			hostname = n.Hostname
		}
	}
	want := map[string]string{"listen_local": listen, "name": name, "login_server": env.Spec.Network.LoginServer, "hostname": hostname}
	if ref := env.Spec.Network.AuthKeyFrom; ref != "" {
		if env.Secret == nil {
			return nil, false, Configf("run the step on an agent", "network.authKeyFrom: no secret resolver on this node")
		}
		key, err := env.Secret(ref)
		if err != nil {
			return nil, false, Configf("make network.authKeyFrom resolvable on the hostapp node", "network.authKeyFrom: %w", err)
		}
		want["auth_key"] = key
		return want, true, nil
	}
	return want, false, nil
}

// hostAppRead reads the current config: nil map when the file is absent.
func hostAppRead(path string) (map[string]any, []byte, fs.FileMode, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, 0, nil
	}
	if err != nil {
		return nil, nil, 0, fmt.Errorf("reading host app config: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, nil, 0, fmt.Errorf("reading host app config: %w", err)
	}
	if !st.Mode().IsRegular() {
		return nil, nil, 0, Configf("remove it or set application.hostApp.configPath", "host app config %s is not a regular file", path)
	}
	if st.Size() > MaxHostAppConfig {
		return nil, nil, 0, Configf("shrink or remove it", "host app config %s is larger than %d bytes", path, MaxHostAppConfig)
	}
	b := make([]byte, st.Size())
	if _, err := f.ReadAt(b, 0); err != nil && st.Size() > 0 {
		return nil, nil, 0, fmt.Errorf("reading host app config %s: %w", path, err)
	}
	m, err := parseHostAppConfig(b)
	if err != nil {
		return nil, nil, 0, Configf("fix or remove it", "host app config %s is not a JSON object: %v", path, err)
	}
	return m, b, st.Mode().Perm(), nil
}

// hostAppChanges lists the managed keys whose value differs (values never
// shown: one of them may be the auth key).
func hostAppChanges(cur map[string]any, want map[string]string, secret bool, mode fs.FileMode) []string {
	var out []string
	for _, k := range hostAppKeys {
		w, ok := want[k]
		c, has := cur[k]
		switch {
		case !ok && k == "auth_key" && has:
			out = append(out, "-auth_key") // a key setup no longer hands out
		case ok && c != w:
			out = append(out, k)
		}
	}
	if cur != nil && secret && mode&0o077 != 0 {
		out = append(out, fmt.Sprintf("mode %o->600", mode))
	}
	return out
}

func planHostAppConfig(_ context.Context, env *Env) (Plan, error) {
	path, err := hostAppPath(env)
	if err != nil {
		return Plan{}, err
	}
	want, secret, err := hostAppWanted(env)
	if err != nil {
		return Plan{}, err
	}
	cur, _, mode, err := hostAppRead(path)
	if err != nil {
		return Plan{}, err
	}
	if cur == nil {
		return Plan{Action: messages.ActionCreate, Diff: "create " + path}, nil
	}
	if ch := hostAppChanges(cur, want, secret, mode); len(ch) > 0 {
		return Plan{Action: messages.ActionUpdate, Diff: "update " + path + " (" + strings.Join(ch, ", ") + ")"}, nil
	}
	return Plan{Action: messages.ActionUnchanged, Diff: "no changes"}, nil
}

// hostAppUndo is Applied.Undo of hostapp_config: no values, only where the
// previous file was kept.
type hostAppUndo struct {
	Path    string `json:"path"`
	Existed bool   `json:"existed"`
	Backup  string `json:"backup,omitempty"`
}

func applyHostAppConfig(_ context.Context, env *Env) (Applied, error) {
	path, err := hostAppPath(env)
	if err != nil {
		return Applied{}, err
	}
	want, secret, err := hostAppWanted(env)
	if err != nil {
		return Applied{}, err
	}
	cur, prev, mode, err := hostAppRead(path)
	if err != nil {
		return Applied{}, err
	}
	action, diff := messages.ActionCreate, "create "+path
	if cur != nil {
		ch := hostAppChanges(cur, want, secret, mode)
		if len(ch) == 0 {
			return Applied{Action: messages.ActionUnchanged, Diff: "no changes"}, nil
		}
		action, diff = messages.ActionUpdate, "update "+path+" ("+strings.Join(ch, ", ")+")"
	}
	next := map[string]any{}
	for k, v := range cur {
		next[k] = v
	}
	delete(next, "auth_key")
	for k, v := range want {
		next[k] = v
	}
	body, err := json.MarshalIndent(next, "", "  ")
	if err != nil {
		return Applied{}, fmt.Errorf("encoding host app config: %w", err)
	}
	body = append(body, '\n')
	newMode := fs.FileMode(0o644)
	if secret || (cur != nil && mode&0o077 == 0) {
		newMode = 0o600
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return Applied{}, fmt.Errorf("host app config dir: %w", err)
	}
	undo := hostAppUndo{Path: path, Existed: cur != nil}
	if cur != nil {
		// The previous file may hold a key: keep it beside the config with
		// its own mode (at most 0600), never in the run record.
		undo.Backup = path + hostAppBackupSuffix
		if err := appWriteFile(undo.Backup, prev, 0o600); err != nil {
			return Applied{}, fmt.Errorf("keeping the previous host app config: %w", err)
		}
	}
	if err := appWriteFile(path, body, newMode); err != nil {
		return Applied{}, fmt.Errorf("writing host app config: %w", err)
	}
	return Applied{Action: action, Diff: diff, Undo: undo}, nil
}

func undoHostAppConfig(_ context.Context, env *Env, raw json.RawMessage) error {
	u, err := decodeHostAppUndo(raw)
	if err != nil || u == nil {
		return err
	}
	path, err := hostAppPath(env)
	if err != nil {
		return err
	}
	if u.Path != path {
		return fmt.Errorf("undo record names %q, the spec's host app config is %q: not touching either", u.Path, path)
	}
	if !u.Existed {
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("removing host app config: %w", err)
		}
		return nil
	}
	if u.Backup != path+hostAppBackupSuffix {
		return fmt.Errorf("undo record: backup %q is not beside %q", u.Backup, path)
	}
	if err := os.Rename(u.Backup, path); err != nil {
		return fmt.Errorf("restoring host app config from %s: %w", u.Backup, err)
	}
	return nil
}

// decodeHostAppUndo decodes an undo record; nil when there is none.
func decodeHostAppUndo(raw json.RawMessage) (*hostAppUndo, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	var u hostAppUndo
	if err := json.Unmarshal(raw, &u); err != nil {
		return nil, fmt.Errorf("undo record: %w", err)
	}
	if !filepath.IsAbs(u.Path) || filepath.Clean(u.Path) != u.Path {
		return nil, fmt.Errorf("undo record: path %q is not a clean absolute path", u.Path)
	}
	if u.Existed != (u.Backup != "") {
		return nil, fmt.Errorf("undo record: existed=%v with backup %q", u.Existed, u.Backup)
	}
	return &u, nil
}

// parseHostAppConfig decodes the host app's config.json (an object; empty
// is an empty object).
func parseHostAppConfig(b []byte) (map[string]any, error) {
	m := map[string]any{}
	if len(bytes.TrimSpace(b)) == 0 {
		return m, nil
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, err
	}
	if m == nil { // the JSON null
		return nil, errors.New("null is not an object")
	}
	return m, nil
}

// appWriteFile writes b to path through a temporary file in the same
// directory and a rename, with mode perm.
func appWriteFile(path string, b []byte, perm fs.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			_ = os.Remove(tmp)
		}
	}()
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	ok = true
	return nil
}
