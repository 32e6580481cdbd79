{{/* Chart name, truncated to the 63 characters Kubernetes allows. */}}
{{- define "tidewatch.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-qualified name; components append a short suffix. */}}
{{- define "tidewatch.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "tidewatch.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "tidewatch.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tidewatch
{{- end }}

{{/* Selector labels of one component: (dict "ctx" $ "component" "ingest") */}}
{{- define "tidewatch.selector" -}}
app.kubernetes.io/name: {{ include "tidewatch.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "tidewatch.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "tidewatch.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tidewatch.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Name of the Secret holding the ingest server certificate and fleet CA. */}}
{{- define "tidewatch.tlsSecret" -}}
{{- if .Values.tls.certManager.enabled }}
{{- printf "%s-ingest-tls" (include "tidewatch.fullname" .) }}
{{- else }}
{{- .Values.tls.existingSecret }}
{{- end }}
{{- end }}

{{/* Cross-field checks the JSON schema cannot express. */}}
{{- define "tidewatch.validate" -}}
{{- if not (or .Values.tls.certManager.enabled .Values.tls.existingSecret) }}
{{- fail "tls: ingest needs a server certificate and the fleet CA: set tls.existingSecret (keys tls.crt, tls.key, ca.crt) or tls.certManager.enabled=true" }}
{{- end }}
{{- if and .Values.tls.certManager.enabled (not .Values.tls.certManager.createIssuer) (not .Values.tls.certManager.issuerRef.name) }}
{{- fail "tls.certManager: with createIssuer=false, set issuerRef.name (an issuer backed by the fleet CA)" }}
{{- end }}
{{- if and .Values.tls.certManager.enabled (not .Values.tls.certManager.dnsNames) (not .Values.tls.certManager.ipAddresses) }}
{{- fail "tls.certManager: list the names sensors connect to in dnsNames or ipAddresses" }}
{{- end }}
{{- if and .Values.ingest.service.nodePort (ne .Values.ingest.service.type "NodePort") }}
{{- fail "ingest.service.nodePort is only valid with ingest.service.type=NodePort" }}
{{- end }}
{{- if lt (int .Values.migrate.rollupRetentionDays) (int .Values.migrate.flowRetentionDays) }}
{{- fail "migrate.rollupRetentionDays must be at least migrate.flowRetentionDays" }}
{{- end }}
{{- if and .Values.ingest.autoscaling.enabled (gt (int .Values.ingest.autoscaling.minReplicas) (int .Values.ingest.autoscaling.maxReplicas)) }}
{{- fail "ingest.autoscaling: minReplicas is larger than maxReplicas" }}
{{- end }}
{{- end }}

{{/* Kafka SASL credentials from the Secret, as environment variables. */}}
{{- define "tidewatch.kafkaSecretEnv" -}}
{{- with .Values.kafka.sasl.existingSecret }}
- name: TIDEWATCH_KAFKA_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.kafka.sasl.usernameKey }}
- name: TIDEWATCH_KAFKA_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.kafka.sasl.passwordKey }}
{{- end }}
{{- end }}

{{/* ClickHouse password from the Secret, as an environment variable. */}}
{{- define "tidewatch.clickhouseSecretEnv" -}}
{{- with .Values.clickhouse.existingSecret }}
- name: TIDEWATCH_CLICKHOUSE_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.clickhouse.passwordKey }}
{{- end }}
{{- end }}

{{/* Extra librdkafka settings as arguments. */}}
{{- define "tidewatch.kafkaArgs" -}}
{{- range $k, $v := .Values.kafka.options }}
- --kafka-option={{ $k }}={{ $v }}
{{- end }}
{{- end }}

{{/* ClickHouse settings as environment variables. */}}
{{- define "tidewatch.clickhouseEnv" -}}
- name: TIDEWATCH_CLICKHOUSE_URL
  value: {{ .Values.clickhouse.url | quote }}
- name: TIDEWATCH_CLICKHOUSE_DATABASE
  value: {{ .Values.clickhouse.database | quote }}
- name: TIDEWATCH_CLICKHOUSE_USER
  value: {{ .Values.clickhouse.user | quote }}
{{- include "tidewatch.clickhouseSecretEnv" . }}
{{- end }}

{{- define "tidewatch.commonEnv" -}}
- name: RUST_LOG
  value: {{ .Values.logLevel | quote }}
- name: NO_COLOR
  value: "1"
{{- end }}
