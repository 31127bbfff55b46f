{{/* Names and labels shared by every template. */}}

{{- define "sdplane.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "sdplane.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: sdplane
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "sdplane.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "sdplane.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "sdplane.adminSecret" -}}
{{- .Values.adminToken.existingSecret | default (printf "%s-admin-token" (include "sdplane.fullname" .)) -}}
{{- end -}}

{{- define "sdplane.modelsVolumeArg" -}}
{{- if eq .Values.models.type "hostPath" -}}
hostPath:{{ .Values.models.hostPath }}
{{- else if eq .Values.models.type "pvc" -}}
pvc:{{ .Values.models.pvc.claimName }}
{{- else -}}
{{- fail "models.type must be pvc or hostPath" -}}
{{- end -}}
{{- end -}}

{{- define "sdplane.modelsVolume" -}}
- name: models
{{- if eq .Values.models.type "hostPath" }}
  hostPath:
    path: {{ .Values.models.hostPath }}
    type: Directory
{{- else }}
  persistentVolumeClaim:
    claimName: {{ .Values.models.pvc.claimName }}
    readOnly: true
{{- end }}
{{- end -}}

{{/* Restricted pod security: non-root (the image's uid 10001), no privilege escalation. */}}
{{- define "sdplane.podSecurity" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "sdplane.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
{{- end -}}
