{{/* Chart name, truncated to the 63 characters Kubernetes allows. */}}
{{- define "wml.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release-chart, unless overridden. */}}
{{- define "wml.fullname" -}}
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

{{- define "wml.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Standard labels. */}}
{{- define "wml.labels" -}}
helm.sh/chart: {{ include "wml.chart" . }}
{{ include "wml.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: workflow-middlelayer
{{- end }}

{{- define "wml.selectorLabels" -}}
app.kubernetes.io/name: {{ include "wml.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "wml.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "wml.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "wml.jobsNamespace" -}}
{{- default (printf "%s-jobs" .Release.Namespace) .Values.workflow.jobsNamespace }}
{{- end }}

{{/* The egress rules a job pod keeps: DNS to the cluster's DNS pods only, and the allowed CIDRs. */}}
{{- define "wml.workerEgress" -}}
- to:
    - namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: {{ .Values.workflow.clusterDns.namespace }}
      podSelector:
        matchLabels:
          {{- toYaml .Values.workflow.clusterDns.podLabels | nindent 10 }}
  ports:
    - {protocol: UDP, port: 53}
    - {protocol: TCP, port: 53}
{{- range .Values.workflow.allowedEgressCidrs }}
- to:
    - ipBlock:
        cidr: {{ . }}
{{- end }}
{{- end }}

{{- define "wml.authSecret" -}}
{{- default (printf "%s-auth" (include "wml.fullname" .)) .Values.auth.existingSecret }}
{{- end }}

{{/* An image reference from {repository, tag}: the tag defaults to the chart's appVersion. */}}
{{- define "wml.image" -}}
{{- printf "%s:%s" .image.repository (.image.tag | default .root.Chart.AppVersion) }}
{{- end }}
