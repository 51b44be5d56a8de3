{{- /*
Names, labels and small computations shared by the contoso templates. A role's objects are named
"<fullname>-<role>", or just "<fullname>" when the release is already named after the role (contoso-notify).
*/ -}}

{{- define "contoso.roles" -}}accept process notify{{- end -}}

{{- define "contoso.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "contoso.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- /* (dict "root" $ "role" "notify") */ -}}
{{- define "contoso.roleFullname" -}}
{{- $full := include "contoso.fullname" .root -}}
{{- if hasSuffix (printf "-%s" .role) $full -}}
{{- $full -}}
{{- else -}}
{{- printf "%s-%s" (trunc (int (sub 62 (len .role))) $full | trimSuffix "-") .role -}}
{{- end -}}
{{- end -}}

{{- define "contoso.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "contoso.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: contoso
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- /* (dict "root" $ "role" "notify") */ -}}
{{- define "contoso.selectorLabels" -}}
app.kubernetes.io/name: {{ include "contoso.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .role }}
{{- end -}}

{{- /* (dict "root" $ "role" "notify") */ -}}
{{- define "contoso.roleLabels" -}}
{{ include "contoso.labels" .root }}
app.kubernetes.io/component: {{ .role }}
{{- end -}}

{{- define "contoso.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "contoso.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "contoso.configName" -}}
{{- printf "%s-config" (include "contoso.fullname" . | trunc 56 | trimSuffix "-") -}}
{{- end -}}

{{- define "contoso.secretName" -}}
{{- default (include "contoso.fullname" .) .Values.secrets.existingSecret -}}
{{- end -}}

{{- define "contoso.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- /* A settings value as the string an environment variable carries: whole numbers without an exponent. */ -}}
{{- define "contoso.envValue" -}}
{{- if kindIs "float64" . -}}
{{- int64 . -}}
{{- else -}}
{{- toString . -}}
{{- end -}}
{{- end -}}

{{- /* The drain settings of a role as JSON: its own drain values over the global ones. (dict "root" $ "role" "notify") */ -}}
{{- define "contoso.drain" -}}
{{- $own := (index .root.Values.roles .role).drain | default dict -}}
{{- merge (deepCopy $own) (deepCopy .root.Values.drain) | toJson -}}
{{- end -}}

{{- /* Whether a role gets a public Service (to its HTTP port): accept and notify by their own switch; process never (it
has no HTTP API; its /metrics and /health/* are on the admin Service). (dict "root" $ "role" "notify") */ -}}
{{- define "contoso.serviceEnabled" -}}
{{- if ne .role "process" -}}
{{- $cfg := index .root.Values.roles .role -}}
{{- if and $cfg.enabled $cfg.service.enabled -}}
true
{{- end -}}
{{- end -}}
{{- end -}}

{{- /* The headless Service of a role's admin port (/metrics, /health/*): "<fullname>-<role>-admin", at most 63
characters and always ending in the role, so the roles' names never collide. (dict "root" $ "role" "notify") */ -}}
{{- define "contoso.adminServiceName" -}}
{{- $full := include "contoso.fullname" .root -}}
{{- $base := trimSuffix (printf "-%s" .role) $full -}}
{{- printf "%s-%s-admin" (trunc (int (sub 56 (len .role))) $base | trimSuffix "-") .role -}}
{{- end -}}

{{- /* CONTOSO_LISTEN and CONTOSO_ADMIN_LISTEN must differ: the second bind would fail and the pods crash-loop. */ -}}
{{- define "contoso.checkPorts" -}}
{{- if eq (int .Values.adminPort) (int .Values.containerPort) -}}
{{- fail (printf "adminPort %d equals containerPort: /metrics and /health/* need a port of their own, apart from the public one" (int .Values.adminPort)) -}}
{{- end -}}
{{- end -}}

{{- /* Whether KEDA scales the role (process only) instead of the chart's HPA. (dict "root" $ "role" "process") */ -}}
{{- define "contoso.keda" -}}
{{- $cfg := index .root.Values.roles .role -}}
{{- if and (eq .role "process") $cfg.enabled $cfg.keda $cfg.keda.enabled -}}
true
{{- end -}}
{{- end -}}

{{- /* The queue the process role consumes: CONTOSO_BUS_PREFIX (the role's own value over the shared one) glued to
the contract name, as src/bus/topology.rs names it. */ -}}
{{- define "contoso.processQueue" -}}
{{- $prefix := .Values.config.CONTOSO_BUS_PREFIX -}}
{{- $own := index (.Values.roles.process.config | default dict) "CONTOSO_BUS_PREFIX" -}}
{{- if not (kindIs "invalid" $own) -}}
{{- $prefix = $own -}}
{{- end -}}
{{- printf "%s%s" (toString (default "" $prefix)) "contoso.order-process" -}}
{{- end -}}

{{- /* A setting as a role's pods see it: the role's own value (roles.<role>.config) over the shared one (config), as
a string; empty when neither sets it. (dict "root" $ "role" "notify" "key" "CONTOSO_REDIS_MODE") */ -}}
{{- define "contoso.roleSetting" -}}
{{- $value := index .root.Values.config .key -}}
{{- $own := index ((index .root.Values.roles .role).config | default dict) .key -}}
{{- if not (kindIs "invalid" $own) -}}
{{- $value = $own -}}
{{- end -}}
{{- if not (kindIs "invalid" $value) -}}
{{- include "contoso.envValue" $value -}}
{{- end -}}
{{- end -}}

{{- /* A role's Redis settings, checked as the binary checks them at start (it would exit and crash-loop): sharded
pub/sub exists on a Redis Cluster only, and a seed list (in the Secret the chart makes) needs cluster mode.
(dict "root" $ "role" "notify") */ -}}
{{- define "contoso.checkRedis" -}}
{{- $mode := include "contoso.roleSetting" (dict "root" .root "role" .role "key" "CONTOSO_REDIS_MODE") | default "standalone" -}}
{{- $pubsub := include "contoso.roleSetting" (dict "root" .root "role" .role "key" "CONTOSO_BACKPLANE_PUBSUB") -}}
{{- if and (eq $pubsub "sharded") (ne $mode "cluster") -}}
{{- fail (printf "roles.%s: CONTOSO_BACKPLANE_PUBSUB is sharded but CONTOSO_REDIS_MODE is %s: sharded pub/sub (SPUBLISH/SSUBSCRIBE) exists on a Redis Cluster only. Set config.CONTOSO_REDIS_MODE=cluster with the cluster's seed nodes in CONTOSO_REDIS_URL, or leave CONTOSO_BACKPLANE_PUBSUB out (classic on one server)" .role $mode) -}}
{{- end -}}
{{- $url := .root.Values.secrets.CONTOSO_REDIS_URL | default "" | toString -}}
{{- if and (not .root.Values.secrets.existingSecret) (contains "," $url) (ne $mode "cluster") -}}
{{- fail (printf "roles.%s: secrets.CONTOSO_REDIS_URL lists several addresses (seed nodes of a Redis Cluster) but CONTOSO_REDIS_MODE is %s, where --redis-url is one server. Set config.CONTOSO_REDIS_MODE=cluster" .role $mode) -}}
{{- end -}}
{{- end -}}

{{- /* Labels of the `helm test` Pod; the NetworkPolicies let it in by them. */ -}}
{{- define "contoso.testSelectorLabels" -}}
app.kubernetes.io/name: {{ include "contoso.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: helm-test
{{- end -}}
