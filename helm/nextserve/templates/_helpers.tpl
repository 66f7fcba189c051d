{{/* Names, labels and the pieces shared by the rank workloads. */}}

{{- define "nextserve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Short enough that "<fullname>-ranks-<group>-<pod>" stays a DNS label (63). */}}
{{- define "nextserve.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else if contains (include "nextserve.name" .) .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "nextserve.name" .) | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "nextserve.ranksName" -}}
{{- printf "%s-ranks" (include "nextserve.fullname" .) -}}
{{- end -}}

{{- define "nextserve.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "nextserve.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "nextserve.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* selectorLabels: pass (dict "root" $ "component" "router"|"rank"). */}}
{{- define "nextserve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "nextserve.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "nextserve.labels" -}}
{{ include "nextserve.selectorLabels" . }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end -}}

{{- define "nextserve.modelDir" -}}
{{- if .Values.model.subPath -}}
{{- printf "%s/%s" .Values.model.mountPath .Values.model.subPath -}}
{{- else -}}
{{- .Values.model.mountPath -}}
{{- end -}}
{{- end -}}

{{- define "nextserve.multiPod" -}}
{{- if gt (int .Values.ranks.podsPerGroup) 1 }}true{{ end -}}
{{- end -}}

{{/* DNS name of pod `pod` of group `group`: (dict "root" $ "group" g "pod" p). */}}
{{- define "nextserve.rankHost" -}}
{{- $root := .root -}}
{{- $ranks := include "nextserve.ranksName" $root -}}
{{- if eq $root.Values.ranks.workload "lws" -}}
{{- if eq (int .pod) 0 -}}
{{- printf "%s-%d.%s.%s.svc" $ranks (int .group) $ranks $root.Release.Namespace -}}
{{- else -}}
{{- printf "%s-%d-%d.%s.%s.svc" $ranks (int .group) (int .pod) $ranks $root.Release.Namespace -}}
{{- end -}}
{{- else -}}
{{- printf "%s-%d-%d.%s.%s.svc" $ranks (int .group) (int .pod) $ranks $root.Release.Namespace -}}
{{- end -}}
{{- end -}}

{{/* The router's --ranks: every rank of every group (pod host : port + local index). */}}
{{- define "nextserve.rankAddresses" -}}
{{- $root := . -}}
{{- $addresses := list -}}
{{- range $g := until (int $root.Values.ranks.groups) -}}
{{- range $p := until (int $root.Values.ranks.podsPerGroup) -}}
{{- $host := include "nextserve.rankHost" (dict "root" $root "group" $g "pod" $p) -}}
{{- range $l := until (int $root.Values.ranks.ranksPerPod) -}}
{{- $addresses = append $addresses (printf "%s:%d" $host (add (int $root.Values.ranks.port) $l)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- join "," $addresses -}}
{{- end -}}

{{/*
The rank pod template. (dict "root" $ "role" "leader"|"worker"|"auto" "groupHosts" "a,b" or "").
*/}}
{{- define "nextserve.rankPodTemplate" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- $multiPod := include "nextserve.multiPod" $root -}}
{{- $gpus := int $v.ranks.gpusPerPod -}}
metadata:
  labels:
    {{- include "nextserve.selectorLabels" (dict "root" $root "component" "rank") | nindent 4 }}
  annotations:
    checksum/launch: {{ include (print $root.Template.BasePath "/rank-configmap.yaml") $root | sha256sum }}
    {{- with $v.ranks.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "nextserve.serviceAccountName" $root }}
  automountServiceAccountToken: {{ $v.serviceAccount.automountToken }}
  {{- with $v.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml $v.podSecurityContext | nindent 4 }}
  terminationGracePeriodSeconds: {{ $v.ranks.terminationGracePeriodSeconds }}
  containers:
    - name: rank
      image: {{ include "nextserve.image" $root }}
      imagePullPolicy: {{ $v.image.pullPolicy }}
      command: ["/bin/bash", "/etc/nextserve/launch/launch.sh", {{ .role | quote }}, "--"]
      args:
        - --model
        - {{ include "nextserve.modelDir" $root | quote }}
        - --threads
        - {{ $v.ranks.threads | quote }}
        - --kv-blocks
        - {{ $v.ranks.kvBlocks | quote }}
        - --block-size
        - {{ $v.ranks.blockSize | quote }}
        - --state-slots
        - {{ $v.ranks.stateSlots | quote }}
        - --max-batch-tokens
        - {{ $v.ranks.maxBatchTokens | quote }}
        - --max-running
        - {{ $v.ranks.maxRunning | quote }}
        {{- if gt (int $v.ranks.maxContext) 0 }}
        - --max-context
        - {{ $v.ranks.maxContext | quote }}
        {{- end }}
        {{- range $v.ranks.extraArgs }}
        - {{ . | quote }}
        {{- end }}
      env:
        - name: HOME
          value: /tmp
        - name: OMP_NUM_THREADS
          value: {{ $v.ranks.threads | quote }}
        - name: NEXTSERVE_RANK_BIN
          value: {{ printf "%s/nextserve-rank" $v.image.binDir | quote }}
        - name: NEXTSERVE_RANK_PORT
          value: {{ $v.ranks.port | quote }}
        - name: NEXTSERVE_PODS_PER_GROUP
          value: {{ $v.ranks.podsPerGroup | quote }}
        - name: NEXTSERVE_RANKS_PER_POD
          value: {{ $v.ranks.ranksPerPod | quote }}
        - name: NEXTSERVE_SSH_PORT
          value: {{ $v.mpi.sshPort | quote }}
        - name: NEXTSERVE_WAIT_S
          value: {{ $v.mpi.waitSeconds | quote }}
        {{- if .groupHosts }}
        - name: NEXTSERVE_GROUP_HOSTS
          value: {{ .groupHosts | quote }}
        {{- end }}
        {{- with $v.mpi.extraMpirunArgs }}
        - name: NEXTSERVE_MPIRUN_ARGS
          value: {{ join " " . | quote }}
        {{- end }}
        {{- if and $v.metrics.enabled $v.metrics.portFlag }}
        - name: NEXTSERVE_METRICS_FLAG
          value: {{ $v.metrics.portFlag | quote }}
        - name: NEXTSERVE_METRICS_PORT
          value: {{ $v.metrics.port | quote }}
        {{- end }}
        {{- $forward := list "OMP_NUM_THREADS" "LD_LIBRARY_PATH" "PATH" }}
        {{- range $name, $value := $v.mpi.mca }}
        {{- $forward = append $forward (printf "OMPI_MCA_%s" $name) }}
        - name: {{ printf "OMPI_MCA_%s" $name }}
          value: {{ $value | quote }}
        {{- end }}
        {{- if gt $gpus 0 }}
        {{- range $name, $value := $v.mpi.nccl }}
        {{- $forward = append $forward $name }}
        - name: {{ $name }}
          value: {{ $value | quote }}
        {{- end }}
        {{- end }}
        {{- range $v.ranks.env }}
        {{- $forward = append $forward .name }}
        - {{- toYaml . | nindent 10 }}
        {{- end }}
        - name: NEXTSERVE_FORWARD_ENV
          value: {{ join " " $forward | quote }}
      ports:
        {{- range $l := until (int $v.ranks.ranksPerPod) }}
        - name: {{ printf "rank-%d" $l }}
          containerPort: {{ add (int $v.ranks.port) $l }}
          protocol: TCP
        {{- end }}
        {{- if $multiPod }}
        - name: ssh
          containerPort: {{ $v.mpi.sshPort }}
          protocol: TCP
        {{- end }}
        {{- if $v.metrics.enabled }}
        {{- range $l := until (int $v.ranks.ranksPerPod) }}
        - name: {{ printf "metrics-%d" $l }}
          containerPort: {{ add (int $v.metrics.port) $l }}
          protocol: TCP
        {{- end }}
        {{- end }}
      # gRPC health of the pod's first rank (NOT_SERVING until its weights are loaded and its
      # group has formed). Its group's ranks live and die together (mpirun ends them all).
      startupProbe:
        grpc:
          port: {{ $v.ranks.port }}
        periodSeconds: 10
        timeoutSeconds: 5
        failureThreshold: {{ div (int $v.ranks.startupSeconds) 10 }}
      readinessProbe:
        grpc:
          port: {{ $v.ranks.port }}
        periodSeconds: 5
        timeoutSeconds: 3
        failureThreshold: 2
      livenessProbe:
        grpc:
          port: {{ $v.ranks.port }}
        periodSeconds: 10
        timeoutSeconds: 5
        failureThreshold: 6
      resources:
        {{- $resources := deepCopy $v.ranks.resources }}
        {{- if gt $gpus 0 }}
        {{- $limits := default dict $resources.limits }}
        {{- $_ := set $limits $v.ranks.gpuResourceName $gpus }}
        {{- $_ := set $resources "limits" $limits }}
        {{- $requests := default dict $resources.requests }}
        {{- $_ := set $requests $v.ranks.gpuResourceName $gpus }}
        {{- $_ := set $resources "requests" $requests }}
        {{- end }}
        {{- toYaml $resources | nindent 8 }}
      securityContext:
        {{- toYaml $v.securityContext | nindent 8 }}
      volumeMounts:
        - name: model
          mountPath: {{ $v.model.mountPath }}
          readOnly: true
        - name: dshm
          mountPath: /dev/shm
        - name: tmp
          mountPath: /tmp
        - name: launch
          mountPath: /etc/nextserve/launch
          readOnly: true
        {{- if $multiPod }}
        - name: ssh
          mountPath: /etc/nextserve/ssh
          readOnly: true
        - name: run-sshd
          mountPath: /run/sshd
        {{- end }}
  volumes:
    - name: model
      {{- toYaml $v.model.volume | nindent 6 }}
    - name: dshm
      emptyDir:
        medium: Memory
        sizeLimit: {{ $v.ranks.shmSize }}
    - name: tmp
      emptyDir: {}
    - name: launch
      configMap:
        name: {{ include "nextserve.ranksName" $root }}-launch
    {{- if $multiPod }}
    - name: ssh
      secret:
        secretName: {{ $v.mpi.sshSecret }}
        defaultMode: 0440
    - name: run-sshd
      emptyDir: {}
    {{- end }}
  {{- with $v.ranks.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.ranks.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.ranks.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}
