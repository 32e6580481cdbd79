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

{{/* Name of the Secret holding the ingest server certificate. */}}
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
{{- fail "tls: ingest needs a server certificate: set tls.existingSecret (keys tls.crt, tls.key) or tls.certManager.enabled=true" }}
{{- end }}
{{- if not .Values.tls.sensorCA.existingSecret }}
{{- fail "tls.sensorCA.existingSecret: ingest needs the sensor CA certificate to verify sensors (a Secret with ca.crt; `tidewatch-collector pki print ca`)" }}
{{- end }}
{{- if and .Values.tls.certManager.enabled (not .Values.tls.certManager.createIssuer) (not .Values.tls.certManager.issuerRef.name) }}
{{- fail "tls.certManager: with createIssuer=false, set issuerRef.name (an issuer backed by the server CA)" }}
{{- end }}
{{- if and .Values.tls.certManager.enabled .Values.tls.certManager.createIssuer (eq .Values.tls.certManager.serverCaSecretName .Values.tls.sensorCA.existingSecret) }}
{{- fail "tls.certManager.serverCaSecretName is the sensor CA's Secret: cert-manager must issue from a server CA of its own, never from the sensor CA (anyone able to create a Certificate could mint sensors)" }}
{{- end }}
{{- if hasPrefix "SASL" .Values.kafka.security.protocol }}
{{- if not (and .Values.kafka.sasl.ingest.existingSecret .Values.kafka.sasl.sink.existingSecret) }}
{{- fail (printf "kafka.security.protocol=%s: set kafka.sasl.ingest.existingSecret and kafka.sasl.sink.existingSecret (one SASL user per component, for the ACLs)" .Values.kafka.security.protocol) }}
{{- end }}
{{- if and .Values.detect.enabled (not .Values.kafka.sasl.detect.existingSecret) }}
{{- fail "kafka.sasl.detect.existingSecret: the detector needs its SASL user" }}
{{- end }}
{{- if and .Values.deliver.destinations (not .Values.kafka.sasl.deliver.existingSecret) }}
{{- fail "kafka.sasl.deliver.existingSecret: alert delivery needs its SASL user" }}
{{- end }}
{{- end }}
{{- if not (and .Values.envelope.signingKey.existingSecret .Values.envelope.verifyKeys.existingSecret .Values.envelope.verifyKeys.keys) }}
{{- fail "envelope: ingest signs every Kafka record and the sinks check it: set envelope.signingKey.existingSecret and envelope.verifyKeys.existingSecret with its keys (`tidewatch-collector envelope-key`)" }}
{{- end }}
{{- range .Values.deliver.destinations }}
{{- if eq (len (compact (list .syslog .webhook))) 0 }}
{{- fail (printf "deliver.destinations %s: give syslog or webhook" .name) }}
{{- end }}
{{- if and .syslog .webhook }}
{{- fail (printf "deliver.destinations %s: syslog or webhook, not both (one destination each)" .name) }}
{{- end }}
{{- end }}
{{- if and .Values.signer.enabled (not .Values.signer.ingestClient.existingSecret) }}
{{- fail "signer.ingestClient.existingSecret: ingest needs its certificate towards the signer (`pki issue-ingest --name ingest --print` in the signer pod)" }}
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

{{/* Kafka SASL credentials of one component, as environment variables:
     (dict "ctx" $ "component" "ingest") */}}
{{- define "tidewatch.kafkaSecretEnv" -}}
{{- $s := index .ctx.Values.kafka.sasl .component -}}
{{- if and (hasPrefix "SASL" .ctx.Values.kafka.security.protocol) $s.existingSecret }}
- name: TIDEWATCH_KAFKA_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ $s.existingSecret }}
      key: {{ $s.usernameKey }}
- name: TIDEWATCH_KAFKA_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $s.existingSecret }}
      key: {{ $s.passwordKey }}
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

{{/* Kafka security and extra librdkafka settings as arguments. */}}
{{- define "tidewatch.kafkaArgs" -}}
{{- $sec := .Values.kafka.security }}
- --kafka-option=security.protocol={{ $sec.protocol }}
{{- if hasPrefix "SASL" $sec.protocol }}
- --kafka-option=sasl.mechanism={{ $sec.saslMechanism }}
{{- end }}
{{- if $sec.caSecret.name }}
- --kafka-option=ssl.ca.location=/etc/tidewatch/kafka-ca/{{ $sec.caSecret.key }}
{{- end }}
{{- range $k, $v := .Values.kafka.options }}
- --kafka-option={{ $k }}={{ $v }}
{{- end }}
{{- end }}

{{/* The brokers' CA as a volume mount and volume (when set). */}}
{{- define "tidewatch.kafkaCaMount" -}}
{{- if .Values.kafka.security.caSecret.name }}
- name: kafka-ca
  mountPath: /etc/tidewatch/kafka-ca
  readOnly: true
{{- end }}
{{- end }}
{{- define "tidewatch.kafkaCaVolume" -}}
{{- with .Values.kafka.security.caSecret.name }}
- name: kafka-ca
  secret:
    secretName: {{ . }}
    defaultMode: 0444
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
{{- with .Values.clickhouse.cluster }}
- name: TIDEWATCH_CLICKHOUSE_CLUSTER
  value: {{ . | quote }}
{{- end }}
{{- with .Values.clickhouse.clusterNodes }}
- name: TIDEWATCH_CLICKHOUSE_CLUSTER_NODES
  value: {{ join "," . | quote }}
{{- end }}
{{- include "tidewatch.clickhouseSecretEnv" . }}
{{- end }}

{{/*
Static Kafka group membership for the consumers (sink, detect, deliver):
each replica is named by its pod, so one whose container crashes and
restarts takes its partitions back at once, without a rebalance of the
others; a pod gone for good leaves the group after the session timeout.
*/}}
{{- define "tidewatch.groupInstanceEnv" -}}
- name: TIDEWATCH_KAFKA_GROUP_INSTANCE_ID
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- end }}

{{- define "tidewatch.commonEnv" -}}
- name: RUST_LOG
  value: {{ .Values.logLevel | quote }}
- name: NO_COLOR
  value: "1"
{{- end }}
