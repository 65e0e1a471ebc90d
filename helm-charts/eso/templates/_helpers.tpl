{{/*
Names
*/}}
{{- define "eso.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The resource name prefix: <release>-<chart>, or the release name alone when it
already contains the chart name (`helm install eso ...` gives "eso").
*/}}
{{- define "eso.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Name of one component's resources: (dict "root" $ "component" "payment").
*/}}
{{- define "eso.componentName" -}}
{{- printf "%s-%s" (include "eso.fullname" .root) .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The participants the chart deploys, as a YAML list (read it with fromYamlArray):
component (the DNS-1123 name in resource names and labels), key (its block in
values), binary (the container's command) and args. The trip agency has no
binary of its own: it is `eso participant trip-agency`, and tripAgency.enabled
turns it off.
*/}}
{{- define "eso.participants" -}}
- component: payment
  key: payment
  binary: payment
  args: []
- component: delivery
  key: delivery
  binary: delivery
  args: []
{{- if .Values.tripAgency.enabled }}
- component: trip-agency
  key: tripAgency
  binary: eso
  args: [participant, trip-agency]
{{- end }}
{{- end }}

{{- define "eso.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels: (dict "root" $ "component" "orchestrator").
*/}}
{{- define "eso.labels" -}}
helm.sh/chart: {{ include "eso.chart" .root }}
{{ include "eso.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: eso
{{- end }}

{{- define "eso.selectorLabels" -}}
app.kubernetes.io/name: {{ include "eso.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "eso.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "eso.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "eso.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
Connections. Each resolves to the user's setting, else the in-chart service
when that is enabled, else fails with what to set.
*/}}
{{- define "eso.database.secretName" -}}
{{- if .Values.database.existingSecret }}
{{- .Values.database.existingSecret }}
{{- else if .Values.database.url }}
{{- include "eso.componentName" (dict "root" . "component" "database") }}
{{- else if .Values.postgresql.enabled }}
{{- include "eso.componentName" (dict "root" . "component" "postgresql") }}
{{- else }}
{{- fail "eso needs PostgreSQL: set database.url (postgres://user:password@host:5432/db), or database.existingSecret (+ database.existingSecretKey), or postgresql.enabled=true for an in-cluster PostgreSQL" }}
{{- end }}
{{- end }}

{{- define "eso.database.secretKey" -}}
{{- if .Values.database.existingSecret }}
{{- required "database.existingSecretKey must name the key of database.existingSecret that holds DATABASE_URL" .Values.database.existingSecretKey }}
{{- else }}
{{- print "database-url" }}
{{- end }}
{{- end }}

{{- define "eso.nats.url" -}}
{{- if .Values.nats.url }}
{{- .Values.nats.url }}
{{- else if .Values.nats.enabled }}
{{- printf "nats://%s:4222" (include "eso.componentName" (dict "root" . "component" "nats")) }}
{{- else }}
{{- fail "eso needs NATS with JetStream: set nats.url (nats://host:4222), or nats.enabled=true for an in-cluster NATS" }}
{{- end }}
{{- end }}

{{- define "eso.otel.endpoint" -}}
{{- if .Values.otel.endpoint }}
{{- .Values.otel.endpoint }}
{{- else if .Values.jaeger.enabled }}
{{- printf "http://%s:4317" (include "eso.componentName" (dict "root" . "component" "jaeger")) }}
{{- end }}
{{- end }}

{{/*
Pod-level settings shared by every pod of the chart (eso and the optional
dependencies): no service links (a Service named like "nats" would inject
NATS_* variables), no API token.
*/}}
{{- define "eso.podCommon" -}}
serviceAccountName: {{ include "eso.serviceAccountName" . }}
automountServiceAccountToken: false
enableServiceLinks: false
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
A container securityContext for the dependency pods: the same hardening as
eso's own containers.
*/}}
{{- define "eso.depContainerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end }}

{{/*
A PodDisruptionBudget for one eso component:
(dict "root" $ "component" "payment" "values" .Values.payment "replicas" N),
plus "key" (the values key, default the component) when they differ.
Only rendered when the component runs more than one pod: with one pod a
minAvailable of 1 would block every node drain.
*/}}
{{- define "eso.pdb" -}}
{{- $pdb := .values.podDisruptionBudget }}
{{- if and $pdb.enabled (gt (int .replicas) 1) }}
{{- if and (not (kindIs "invalid" $pdb.minAvailable)) (not (kindIs "invalid" $pdb.maxUnavailable)) }}
{{- fail (printf "%s.podDisruptionBudget: set minAvailable or maxUnavailable, not both (set the other to null)" (.key | default .component)) }}
{{- end }}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "eso.componentName" . }}
  labels:
    {{- include "eso.labels" . | nindent 4 }}
spec:
  {{- if not (kindIs "invalid" $pdb.maxUnavailable) }}
  maxUnavailable: {{ $pdb.maxUnavailable }}
  {{- else }}
  minAvailable: {{ $pdb.minAvailable | default 1 }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "eso.selectorLabels" . | nindent 6 }}
{{- end }}
{{- end }}

{{/*
Operator tokens. The Secret holding ESO_OPERATOR_TOKEN / ESO_READ_TOKEN, or ""
when none is configured.
*/}}
{{- define "eso.operator.secretName" -}}
{{- if .Values.operator.existingSecret }}
{{- .Values.operator.existingSecret }}
{{- else if or .Values.operator.tokens .Values.operator.readTokens }}
{{- include "eso.componentName" (dict "root" . "component" "operator") }}
{{- end }}
{{- end }}

{{/*
Fails, naming the value and the entry's position but never its content, when a token list would stop
the orchestrator at start: (dict "key" "operator.tokens" "value" "alice:...").
The same rules as the orchestrator's: entries split on commas, `name:token`
splits at the first colon, a token has at least 16 characters.
*/}}
{{- define "eso.operator.checkTokens" -}}
{{- range $i, $entry := splitList "," .value }}
{{- $entry = trim $entry }}
{{- if $entry }}
{{- $token := $entry }}
{{- $name := "operator" }}
{{- if contains ":" $entry }}
{{- $parts := splitn ":" 2 $entry }}
{{- $name = trim $parts._0 }}
{{- $token = trim $parts._1 }}
{{- end }}
{{- if not (regexMatch "^[A-Za-z0-9_.@-]{1,64}$" $name) }}
{{- fail (printf "%s: entry %d: a token's name must be 1 to 64 letters, digits or _.@-" $.key (add1 $i)) }}
{{- end }}
{{- if not (regexMatch "(?s)^.{16,}$" $token) }}
{{- fail (printf "%s: entry %d: the token is shorter than 16 characters; use a random one, e.g. openssl rand -hex 32" $.key (add1 $i)) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
