{{/*
Chart name, or nameOverride.
*/}}
{{- define "anomaly-exporter.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: <release>-<chart name>, or the release name alone if it already contains the chart name.
Truncated to 63 characters (DNS label limit).
*/}}
{{- define "anomaly-exporter.fullname" -}}
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
Chart label value: name-version.
*/}}
{{- define "anomaly-exporter.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Namespace of the release's objects.
*/}}
{{- define "anomaly-exporter.namespace" -}}
{{- default .Release.Namespace .Values.namespaceOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every object.
*/}}
{{- define "anomaly-exporter.labels" -}}
helm.sh/chart: {{ include "anomaly-exporter.chart" . }}
{{ include "anomaly-exporter.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | quote }}
app.kubernetes.io/component: exporter
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Selector labels: stable across upgrades (a Deployment's selector is immutable).
*/}}
{{- define "anomaly-exporter.selectorLabels" -}}
app.kubernetes.io/name: {{ include "anomaly-exporter.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Name of the ServiceAccount the pod runs as.
*/}}
{{- define "anomaly-exporter.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "anomaly-exporter.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The exporter image reference: registry/repository:tag, or @digest when a digest is given.
*/}}
{{- define "anomaly-exporter.image" -}}
{{- $repo := .Values.image.repository }}
{{- if .Values.image.registry }}
{{- $repo = printf "%s/%s" .Values.image.registry .Values.image.repository }}
{{- end }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" $repo .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" $repo (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/*
Name of the ConfigMap holding rules.yaml, and the key of the file in it.
*/}}
{{- define "anomaly-exporter.configMapName" -}}
{{- default (include "anomaly-exporter.fullname" .) .Values.existingConfigMap }}
{{- end }}

{{- define "anomaly-exporter.configMapKey" -}}
{{- if .Values.existingConfigMap }}{{ .Values.existingConfigMapKey }}{{ else }}rules.yaml{{ end }}
{{- end }}

{{/*
The Secret's files: file name -> content, for the non-empty values of .Values.secrets.
*/}}
{{- define "anomaly-exporter.secretFiles" -}}
{{- $s := .Values.secrets }}
{{- $files := dict }}
{{- $known := dict "slack-webhook-url" $s.slackWebhookUrl "webhook-url" $s.webhookUrl "prometheus-bearer-token" $s.prometheusBearerToken "prometheus-password" $s.prometheusPassword "alertmanager-bearer-token" $s.alertmanagerBearerToken "alertmanager-password" $s.alertmanagerPassword }}
{{- range $file, $content := merge (dict) $known (default (dict) $s.extra) }}
{{- if $content }}
{{- $_ := set $files $file $content }}
{{- end }}
{{- end }}
{{- toYaml $files }}
{{- end }}

{{/*
Name of the Secret to mount, or empty when there is none (no existingSecret and no secret values).
*/}}
{{- define "anomaly-exporter.secretName" -}}
{{- if .Values.existingSecret }}
{{- .Values.existingSecret }}
{{- else if (include "anomaly-exporter.secretFiles" . | fromYaml) }}
{{- include "anomaly-exporter.fullname" . }}
{{- end }}
{{- end }}

{{/*
Name of the PVC holding the state directory.
*/}}
{{- define "anomaly-exporter.claimName" -}}
{{- default (include "anomaly-exporter.fullname" .) .Values.persistence.existingClaim }}
{{- end }}
