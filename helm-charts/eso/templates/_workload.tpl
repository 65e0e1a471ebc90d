{{/*
The Deployment of one eso binary. Called with
  (dict "root" $ "component" "payment" "binary" "payment" "port" 8080
        "values" .Values.payment "otelServiceName" "eso-payment")
Optional keys: "args" (a list, rendered as the container's args; without it
no args are rendered) and "containerName" (default: the binary), e.g. the trip
agency runs (dict ... "component" "trip-agency" "binary" "eso"
"args" (list "participant" "trip-agency") "containerName" "trip-agency").
The orchestrator ("component" "orchestrator") also mounts the saga
definitions and rolls when they change, and alone gets the operator tokens
(from a Secret) and the trace link.
*/}}
{{- define "eso.deployment" -}}
{{- $root := .root }}
{{- $v := .values }}
{{- $isOrchestrator := eq .component "orchestrator" }}
{{- $otelEndpoint := include "eso.otel.endpoint" $root }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "eso.componentName" . }}
  labels:
    {{- include "eso.labels" . | nindent 4 }}
spec:
  {{- if not (and $isOrchestrator $root.Values.autoscaling.enabled) }}
  replicas: {{ $v.replicaCount }}
  {{- end }}
  revisionHistoryLimit: 5
  {{- with $v.strategy }}
  strategy:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "eso.selectorLabels" . | nindent 6 }}
  template:
    metadata:
      annotations:
        {{- if $isOrchestrator }}
        checksum/sagas: {{ include (print $root.Template.BasePath "/sagas-configmap.yaml") $root | sha256sum }}
        {{- end }}
        {{- if and $root.Values.database.url (not $root.Values.database.existingSecret) }}
        checksum/database-url: {{ $root.Values.database.url | sha256sum }}
        {{- end }}
        {{- if and $isOrchestrator (or $root.Values.operator.tokens $root.Values.operator.readTokens) (not $root.Values.operator.existingSecret) }}
        checksum/operator-tokens: {{ printf "%s\n%s" $root.Values.operator.tokens $root.Values.operator.readTokens | sha256sum }}
        {{- end }}
        {{- if $root.Values.metrics.podAnnotations }}
        prometheus.io/scrape: "true"
        prometheus.io/port: {{ .port | quote }}
        prometheus.io/path: /metrics
        {{- end }}
        {{- with $v.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      labels:
        {{- include "eso.labels" . | nindent 8 }}
        {{- with $v.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      {{- include "eso.podCommon" $root | nindent 6 }}
      terminationGracePeriodSeconds: {{ $v.terminationGracePeriodSeconds }}
      {{- with $v.priorityClassName }}
      priorityClassName: {{ . }}
      {{- end }}
      securityContext:
        {{- toYaml $root.Values.podSecurityContext | nindent 8 }}
      containers:
        - name: {{ .containerName | default .binary }}
          image: {{ include "eso.image" $root }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          command: [{{ .binary | quote }}]
          {{- with .args }}
          args:
            {{- range . }}
            - {{ . | quote }}
            {{- end }}
          {{- end }}
          securityContext:
            {{- toYaml $root.Values.securityContext | nindent 12 }}
          ports:
            - name: http
              containerPort: {{ .port }}
              protocol: TCP
          env:
            - name: POD_NAME
              valueFrom:
                fieldRef:
                  fieldPath: metadata.name
            - name: POD_NAMESPACE
              valueFrom:
                fieldRef:
                  fieldPath: metadata.namespace
            - name: PORT
              value: {{ .port | quote }}
            - name: DATABASE_URL
              valueFrom:
                secretKeyRef:
                  name: {{ include "eso.database.secretName" $root }}
                  key: {{ include "eso.database.secretKey" $root }}
            - name: NATS_URL
              value: {{ include "eso.nats.url" $root | quote }}
            {{- if $isOrchestrator }}
            - name: SAGAS_DIR
              value: /app/sagas
            {{- with include "eso.operator.secretName" $root }}
            {{- if or $root.Values.operator.existingSecret $root.Values.operator.tokens }}
            - name: ESO_OPERATOR_TOKEN
              valueFrom:
                secretKeyRef:
                  name: {{ . }}
                  key: operator-token
                  optional: true
            {{- end }}
            {{- if or $root.Values.operator.existingSecret $root.Values.operator.readTokens }}
            - name: ESO_READ_TOKEN
              valueFrom:
                secretKeyRef:
                  name: {{ . }}
                  key: read-token
                  optional: true
            {{- end }}
            {{- end }}
            {{- with $root.Values.traceUrl }}
            - name: ESO_TRACE_URL
              value: {{ . | quote }}
            {{- end }}
            - name: ESO_ADMISSION
              value: {{ $root.Values.admission | quote }}
            - name: ESO_RETENTION
              value: {{ $root.Values.history.retention | quote }}
            {{- with $root.Values.history.events.maxAge }}
            - name: ESO_EVENTS_MAX_AGE
              value: {{ . | quote }}
            {{- end }}
            {{- with $root.Values.history.events.maxBytes }}
            - name: ESO_EVENTS_MAX_BYTES
              value: {{ . | quote }}
            {{- end }}
            - name: ESO_EVENTS_REPLICAS
              value: {{ $root.Values.history.events.replicas | quote }}
            {{- end }}
            - name: RUST_LOG
              value: {{ $root.Values.log.level | quote }}
            - name: LOG_FORMAT
              value: {{ $root.Values.log.format | quote }}
            - name: OTEL_SERVICE_NAME
              value: {{ .otelServiceName | quote }}
            {{- if $otelEndpoint }}
            - name: OTEL_EXPORTER_OTLP_ENDPOINT
              value: {{ $otelEndpoint | quote }}
            {{- end }}
            - name: OTEL_TRACES_SAMPLER
              value: {{ $root.Values.otel.sampler | quote }}
            {{- with $root.Values.otel.samplerArg }}
            - name: OTEL_TRACES_SAMPLER_ARG
              value: {{ . | quote }}
            {{- end }}
            - name: OTEL_RESOURCE_ATTRIBUTES
              value: {{ printf "k8s.pod.name=$(POD_NAME),k8s.namespace.name=$(POD_NAMESPACE),service.version=%s" $root.Chart.AppVersion }}{{ with $root.Values.otel.resourceAttributes }},{{ . }}{{ end }}
            {{- with $v.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          startupProbe:
            httpGet:
              path: /healthz
              port: http
            periodSeconds: {{ $v.probes.startup.periodSeconds }}
            failureThreshold: {{ $v.probes.startup.failureThreshold }}
          livenessProbe:
            httpGet:
              path: /healthz
              port: http
            periodSeconds: {{ $v.probes.liveness.periodSeconds }}
            timeoutSeconds: {{ $v.probes.liveness.timeoutSeconds }}
            failureThreshold: {{ $v.probes.liveness.failureThreshold }}
          readinessProbe:
            httpGet:
              path: /readyz
              port: http
            periodSeconds: {{ $v.probes.readiness.periodSeconds }}
            timeoutSeconds: {{ $v.probes.readiness.timeoutSeconds }}
            failureThreshold: {{ $v.probes.readiness.failureThreshold }}
          {{- with $v.resources }}
          resources:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
            {{- if $isOrchestrator }}
            - name: sagas
              mountPath: /app/sagas
              readOnly: true
            {{- end }}
      volumes:
        - name: tmp
          emptyDir:
            sizeLimit: 64Mi
        {{- if $isOrchestrator }}
        - name: sagas
          configMap:
            name: {{ include "eso.componentName" (dict "root" $root "component" "sagas") }}
        {{- end }}
      {{- with $v.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.topologySpreadConstraints }}
      topologySpreadConstraints:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end }}
