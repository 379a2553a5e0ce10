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

{{/*
Spec of the state PVC: the Deployment's single claim (pvc.yaml) and each shard's (volumeClaimTemplates).
*/}}
{{- define "anomaly-exporter.pvcSpec" -}}
accessModes:
  {{- toYaml .Values.persistence.accessModes | nindent 2 }}
{{- if .Values.persistence.storageClass }}
{{- if eq "-" .Values.persistence.storageClass }}
storageClassName: ""
{{- else }}
storageClassName: {{ .Values.persistence.storageClass | quote }}
{{- end }}
{{- end }}
resources:
  requests:
    storage: {{ .Values.persistence.size | quote }}
{{- end }}

{{/*
Name of the sharded StatefulSet, within 52 characters: its pods carry the label
controller-revision-hash=<name>-<10-character hash>, and label values end at 63.
*/}}
{{- define "anomaly-exporter.statefulSetName" -}}
{{- include "anomaly-exporter.fullname" . | trunc 52 | trimSuffix "-" }}
{{- end }}

{{/*
Name of the headless Service that governs the sharded StatefulSet (pod DNS names), within 63 characters.
*/}}
{{- define "anomaly-exporter.headlessServiceName" -}}
{{- printf "%s-headless" (include "anomaly-exporter.fullname" . | trunc 54 | trimSuffix "-") }}
{{- end }}

{{/*
The exporter pod (template metadata and spec), shared by the Deployment and the sharded StatefulSet so the
two can't drift apart. Only the shard flags and where the storage volume comes from depend on the mode.
*/}}
{{- define "anomaly-exporter.podTemplate" -}}
{{- $secretName := include "anomaly-exporter.secretName" . -}}
{{- $webConfig := include "anomaly-exporter.webConfigSecret" . -}}
metadata:
  annotations:
    # A changed rules file or secret rolls the pods.
    checksum/config: {{ include (print $.Template.BasePath "/configmap.yaml") . | sha256sum }}
    checksum/secret: {{ include (print $.Template.BasePath "/secret.yaml") . | sha256sum }}
    {{- with .Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  labels:
    {{- include "anomaly-exporter.labels" . | nindent 4 }}
    {{- with .Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "anomaly-exporter.serviceAccountName" . }}
  automountServiceAccountToken: {{ .Values.serviceAccount.automountServiceAccountToken }}
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  {{- with .Values.podSecurityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}
  containers:
    - name: anomaly-exporter
      image: {{ include "anomaly-exporter.image" . | quote }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      args:
        - --config.file=/etc/anomaly-exporter/rules.yaml
        - --web.listen-address=:9866
        - --storage.path=/var/lib/anomaly-exporter
        - --log.level={{ .Values.log.level }}
        - --log.format={{ .Values.log.format }}
        {{- if .Values.sharding.enabled }}
        # Each pod keeps the series of its shard; the index is the ordinal ending the pod's hostname.
        - --shard.count={{ .Values.sharding.replicas }}
        - --shard.index=auto
        {{- end }}
        {{- if $webConfig }}
        - --web.config.file=/etc/anomaly-exporter/web/web-config.yml
        {{- end }}
        {{- range .Values.extraArgs }}
        - {{ . | quote }}
        {{- end }}
      {{- with .Values.extraEnv }}
      env:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      ports:
        - name: http-metrics
          containerPort: 9866
          protocol: TCP
      {{- with .Values.startupProbe }}
      startupProbe:
        {{- include "anomaly-exporter.probe" (dict "probe" . "ctx" $) | nindent 8 }}
      {{- end }}
      {{- with .Values.livenessProbe }}
      livenessProbe:
        {{- include "anomaly-exporter.probe" (dict "probe" . "ctx" $) | nindent 8 }}
      {{- end }}
      {{- with .Values.readinessProbe }}
      readinessProbe:
        {{- include "anomaly-exporter.probe" (dict "probe" . "ctx" $) | nindent 8 }}
      {{- end }}
      {{- with .Values.resources }}
      resources:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .Values.securityContext }}
      securityContext:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      volumeMounts:
        - name: config
          mountPath: /etc/anomaly-exporter
          readOnly: true
        {{- if $secretName }}
        # Nested in the config mount; the kubelet creates the mount point (Kubernetes >= 1.10).
        - name: secrets
          mountPath: {{ .Values.secretsMountPath }}
          readOnly: true
        {{- end }}
        {{- if $webConfig }}
        - name: web-config
          mountPath: /etc/anomaly-exporter/web
          readOnly: true
        {{- end }}
        {{- if .Values.web.tlsSecret }}
        - name: web-tls
          mountPath: /etc/anomaly-exporter/web-tls
          readOnly: true
        {{- end }}
        - name: storage
          mountPath: /var/lib/anomaly-exporter
        - name: tmp
          mountPath: /tmp
        {{- with .Values.extraVolumeMounts }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
  volumes:
    - name: config
      configMap:
        name: {{ include "anomaly-exporter.configMapName" . }}
        items:
          - key: {{ include "anomaly-exporter.configMapKey" . }}
            path: rules.yaml
    {{- if $secretName }}
    - name: secrets
      secret:
        secretName: {{ $secretName }}
        # Readable by the owner and fsGroup only.
        defaultMode: 0440
    {{- end }}
    {{- if $webConfig }}
    - name: web-config
      secret:
        secretName: {{ $webConfig }}
        items:
          - key: {{ include "anomaly-exporter.webConfigKey" . }}
            path: web-config.yml
        defaultMode: 0440
    {{- end }}
    {{- if .Values.web.tlsSecret }}
    - name: web-tls
      secret:
        secretName: {{ .Values.web.tlsSecret }}
        defaultMode: 0440
    {{- end }}
    {{- if not .Values.persistence.enabled }}
    - name: storage
      # Survives container restarts (alert state is not re-sent or forgotten), not pod rescheduling.
      emptyDir: {}
    {{- else if not .Values.sharding.enabled }}
    - name: storage
      persistentVolumeClaim:
        claimName: {{ include "anomaly-exporter.claimName" . }}
    {{- end }}
    {{- /* Sharded with persistence: "storage" is the StatefulSet's volumeClaimTemplate, one PVC per shard. */}}
    - name: tmp
      emptyDir: {}
    {{- with .Values.extraVolumes }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}

{{/*
The exporter's web config (--web.config.file): the Secret holding it (the chart's or web.existingSecret) and
its key, or empty when there is none. "true" or empty: whether it turns on TLS / basic auth (from the inline
config, or web.tls / web.basicAuth for an existing Secret the chart can't read).
*/}}
{{- define "anomaly-exporter.webConfigSecret" -}}
{{- if .Values.web.existingSecret }}
{{- .Values.web.existingSecret }}
{{- else if .Values.web.config }}
{{- printf "%s-web-config" (include "anomaly-exporter.fullname" . | trunc 52 | trimSuffix "-") }}
{{- end }}
{{- end }}

{{- define "anomaly-exporter.webConfigKey" -}}
{{- if .Values.web.existingSecret }}{{ .Values.web.existingSecretKey }}{{ else }}web-config.yml{{ end }}
{{- end }}

{{- define "anomaly-exporter.webTLS" -}}
{{- $inline := and (not .Values.web.existingSecret) .Values.web.config }}
{{- if or .Values.web.tls (and $inline (get (default (dict) .Values.web.config) "tls_server_config")) }}true{{ end }}
{{- end }}

{{- define "anomaly-exporter.webBasicAuth" -}}
{{- $inline := and (not .Values.web.existingSecret) .Values.web.config }}
{{- if or .Values.web.basicAuth (and $inline (get (default (dict) .Values.web.config) "basic_auth_users")) }}true{{ end }}
{{- end }}

{{/*
A probe as given, fitted to the web config: an httpGet probe gets scheme HTTPS with TLS, and becomes a
tcpSocket probe on the same port with basic auth unless it sends its own Authorization header.
Called with (dict "probe" <probe> "ctx" $).
*/}}
{{- define "anomaly-exporter.probe" -}}
{{- $probe := deepCopy .probe }}
{{- if $probe.httpGet }}
{{- $authorized := false }}
{{- range ($probe.httpGet.httpHeaders | default list) }}
{{- if eq (lower .name) "authorization" }}{{ $authorized = true }}{{ end }}
{{- end }}
{{- if and (include "anomaly-exporter.webBasicAuth" .ctx) (not $authorized) }}
{{- $port := $probe.httpGet.port }}
{{- $_ := unset $probe "httpGet" }}
{{- $_ := set $probe "tcpSocket" (dict "port" $port) }}
{{- else if and (include "anomaly-exporter.webTLS" .ctx) (not $probe.httpGet.scheme) }}
{{- $_ := set $probe.httpGet "scheme" "HTTPS" }}
{{- end }}
{{- end }}
{{- toYaml $probe }}
{{- end }}
