# mailcapture container image: a static binary on a minimal base, run as a
# non-root user. Build: docker build -t mailcapture .
# Run: docker run -v /srv/mailcapture:/data -v /etc/mailcapture:/etc/mailcapture:ro \
#        -p 25:2525 -p 143:2143 -p 110:2110 -p 8025:8025 mailcapture
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/mailcapture ./cmd/mailcapture

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/mailcapture /usr/local/bin/mailcapture
USER nonroot:nonroot
VOLUME ["/data"]
ENV MAILCAPTURE_DATA_DIR=/data
EXPOSE 2525 2143 2110 8025
ENTRYPOINT ["/usr/local/bin/mailcapture"]
CMD ["serve", "--config", "/etc/mailcapture/mailcapture.yaml"]
