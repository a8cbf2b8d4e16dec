{{/* Labels shared by every object; `component` is the part of the product the object belongs to. */}}
{{- define "remediator.labels" -}}
app.kubernetes.io/name: remediator
app.kubernetes.io/part-of: remediator
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/component: {{ .component }}
{{- if not .root.Values.plainManifests }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end }}
{{- end }}

{{/* Pod selector labels of one component. */}}
{{- define "remediator.selector" -}}
app.kubernetes.io/name: remediator
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "remediator.image" -}}
{{ .repository }}:{{ .tag | default .root.Chart.AppVersion }}
{{- end }}

{{/* The service account user names the admission policies match. */}}
{{- define "remediator.handlerUser" -}}
system:serviceaccount:{{ .Values.vmcore.namespace }}:vmcore-handler
{{- end }}
{{- define "remediator.vmcoreControllerUser" -}}
system:serviceaccount:{{ .Values.vmcore.namespace }}:vmcore-controller
{{- end }}

{{/* The container security context of every non-privileged container. */}}
{{- define "remediator.restrictedContainer" -}}
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end }}
