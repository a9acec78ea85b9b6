# The jobstream image used by compose.yaml: one static binary plus the example step.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -o /out/jobstream ./ops/jobstream

FROM debian:bookworm-slim
COPY --from=build /out/jobstream /usr/local/bin/jobstream
COPY ops/steps/echo.sh /usr/local/bin/jobstream-echo-step
ENTRYPOINT ["jobstream"]
