{{- define "modelfleet.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}{{ .Release.Name | trunc 63 | trimSuffix "-" }}{{- else -}}{{ printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}{{- end -}}
{{- end -}}

{{- define "modelfleet.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "modelfleet.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "modelfleet.serviceAccountName" -}}
{{- default (include "modelfleet.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "modelfleet.gatewaySelector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}-gateway
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "modelfleet.gatewayName" -}}
{{- printf "%s-gateway" (include "modelfleet.fullname" .) | trunc 55 | trimSuffix "-" -}}
{{- end -}}

{{- define "modelfleet.gatewayUrl" -}}
{{- default (printf "http://%s.%s.svc:%v" (include "modelfleet.gatewayName" .) .Release.Namespace .Values.gateway.port) .Values.gateway.url -}}
{{- end -}}

{{- /* Read-only: the gateway watches InferenceServices and their pods, and writes nothing. */ -}}
{{- define "modelfleet.gatewayRules" }}
  - apiGroups: [modelfleet.dev]
    resources: [inferenceservices]
    verbs: [get, list, watch]
  - apiGroups: [""]
    resources: [pods]
    verbs: [get, list, watch]
{{- end -}}
