# pxd in a container: one node per container (docs/docker.md).
#
#   docker build -t pxd .
#   docker run -d -p 10809:10809 -p 9001:9001 -v pxd-data:/data pxd
#   docker compose up            # the 3-node cluster of docker-compose.yml
#
# test/unit/docker-files.test.ts checks this file against the code: the
# command exists in the build, the ports are the defaults of src/constants.ts,
# the health check's URL is a real API route, and the runtime stage's files
# are enough to run a node.

# ---- build: compile the TypeScript ----
FROM node:20-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json ./
COPY bin ./bin
COPY src ./src
# npm run build also runs native/build.sh, which builds the attach agent where
# a C compiler is (this image has none, and a node needs no agent).
COPY native ./native
# tsconfig.json also includes test/ and bench/; they are not copied, so only
# src/ and bin/ are compiled.
RUN npm run build

# ---- runtime: production dependencies, the compiled code, the bin/pxd shim ----
FROM node:20-bookworm-slim AS runtime
ENV NODE_ENV=production \
    NODE_OPTIONS=--enable-source-maps \
    PXD_CA_FILE=/data/tls/ca-cert.pem
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund && npm cache clean --force
COPY --from=build /app/dist/bin ./dist/bin
COPY --from=build /app/dist/src ./dist/src
COPY bin/pxd ./bin/pxd
# `pxd` on PATH for `docker exec ... pxd status`; /data owned by the unprivileged
# user before VOLUME, so a new named volume starts out writable by it.
RUN ln -s /app/bin/pxd /usr/local/bin/pxd \
 && mkdir -p /data \
 && chown node:node /data
# The daemon needs no root: its ports are above 1024 and it only writes /data.
USER node
VOLUME /data
# NBD, control API, peer (Raft) transport.
EXPOSE 10809 9001 9002
# The control API answers GET /v1/status once the node has started (joined,
# registered, listening); without a token the answer is a 401, which says as
# much (docs/security.md). It serves HTTPS with the node's certificate from the
# cluster CA, which the node keeps in /data/tls/ca-cert.pem (PXD_CA_FILE, which
# the pxd CLI in the image uses too); http://ADDR in PXD_HOST for a node run
# with --api-plain-http. It listens on --listen only, so when that is not
# 0.0.0.0 set PXD_HOST (ADDR[:PORT], also what the pxd CLI uses) to reach it.
HEALTHCHECK --interval=5s --timeout=5s --start-period=60s --retries=3 \
  CMD ["node", "-e", "const fs=require('fs'),a=process.env.PXD_HOST||'127.0.0.1:9001',f=process.env.PXD_CA_FILE||'',u=new URL(/^https?:[/][/]/.test(a)?a:'https://'+(a.includes(':')?a:a+':9001'));require(u.protocol.slice(0,-1)).get(new URL('/v1/status',u),{ca:f&&fs.existsSync(f)?fs.readFileSync(f):undefined,timeout:4000},r=>process.exit(r.statusCode===200||r.statusCode===401?0:1)).on('error',()=>process.exit(1)).on('timeout',()=>process.exit(1))"]
ENTRYPOINT ["node", "--initial-old-space-size=64", "dist/bin/pxd.js"]
CMD ["daemon", "--data-dir", "/data", "--listen", "0.0.0.0"]
