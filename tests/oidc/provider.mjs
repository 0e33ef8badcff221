// A real OpenID provider (npm's oidc-provider) for tests/tests/oidc.rs, listening on
// 127.0.0.1 only. It issues JWT access tokens by the client credentials grant; each test
// client's subject is its client_id and its groups are listed below. A token is for the
// model servers (audience `sluice`) unless the client asks for the approvals endpoint with
// `resource=urn:sluice:approvals` (audience `sluice-approvals`).
//
//   node provider.mjs PORT STATE_FILE [rotate]
//
// The signing keys live in STATE_FILE (made on first start); `rotate` adds a new key in
// front (the one that signs from then on) and keeps the old one published, as a provider
// does during a key rollover. Prints "ready <issuer>" once it listens.
import { generateKeyPairSync, randomUUID } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import Provider from 'oidc-provider';

const [port, stateFile, mode] = process.argv.slice(2);
if (!port || !stateFile) {
  console.error('usage: node provider.mjs PORT STATE_FILE [rotate]');
  process.exit(2);
}
const issuer = `http://127.0.0.1:${port}`;

function newKey() {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { ...privateKey.export({ format: 'jwk' }), kid: randomUUID(), alg: 'RS256', use: 'sig' };
}

let keys = existsSync(stateFile) ? JSON.parse(readFileSync(stateFile, 'utf8')) : [newKey()];
if (mode === 'rotate') keys = [newKey(), ...keys];
writeFileSync(stateFile, JSON.stringify(keys), { mode: 0o600 });

const GROUPS = {
  'alice-svc': ['ml-eng'],
  'bob-svc': ['ops'],
  'carol-sre': ['sre'],
  'dana-sre': ['sre'],
};
const client = (id) => ({
  client_id: id,
  client_secret: `${id}-secret`,
  grant_types: ['client_credentials'],
  redirect_uris: [],
  response_types: [],
});
const RESOURCE = 'urn:sluice:models';
const APPROVALS = 'urn:sluice:approvals';

const provider = new Provider(issuer, {
  clients: Object.keys(GROUPS).map(client),
  jwks: { keys },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => RESOURCE,
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, indicator) => ({
        scope: indicator === APPROVALS ? 'approvals' : 'models',
        audience: indicator === APPROVALS ? 'sluice-approvals' : 'sluice',
        accessTokenTTL: 600,
        accessTokenFormat: 'jwt',
        jwt: { sign: { alg: 'RS256' } },
      }),
    },
  },
  extraTokenClaims: (ctx, token) => {
    const groups = GROUPS[token.clientId];
    return groups ? { groups } : undefined;
  },
});

const server = provider.listen(Number(port), '127.0.0.1', () => {
  console.log(`ready ${issuer} kid=${keys[0].kid}`);
});
const stop = () => server.close(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
