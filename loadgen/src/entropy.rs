//! Where a leg's randomness comes from: the operating system (real time), or a seed (virtual
//! time, so that a run replays exactly).
//!
//! A leg draws randomness for its DTLS certificate and key, its DTLS handshake (randoms, the
//! ECDHE key, the ECDSA signatures), its ICE credentials and tie-breaker, and its TURN client.
//! All of it goes through one `rtc` crypto provider, so a seeded leg is a leg whose provider is
//! seeded. ring (the provider real time uses) takes its randomness only from the OS, so the
//! seeded provider does the three things that need randomness itself with RustCrypto's P-256:
//! key generation and ECDHE from seeded bytes, and ECDSA with RFC 6979's deterministic nonces.
//! Everything else (hashes, MACs, ciphers, verification) is ring's, as in real time.
//!
//! An ECDSA signature's DER length is 70 to 72 bytes, as its two integers need a leading zero
//! or not, and the bytes it signs carry the wall clock: `rtc-dtls` writes the current second
//! into each hello's random (`HandshakeRandom::populate` reads `SystemTime`). So a signature
//! over the same handshake a second later can be a byte longer, and the handshake's bytes on
//! the wire with it. The seeded signer therefore signs to one length, [`SIGNATURE_LEN`] (the
//! mean of a browser's), trying RFC 6979 nonces with a counter as extra data until one fits.
//!
//! Left to the OS even when seeded: STUN transaction ids and ICE candidate foundations, which
//! `rtc` draws from `rand`'s thread generator, and the hello randoms' clock second. All have
//! fixed lengths and never decide an order, so they change no figure.

use std::sync::{Arc, Mutex};

use ecdsa::hazmat::SignPrimitive;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rtc::crypto::{
    ActiveKeyExchange, AeadAlgorithm, AeadCipher, BlockCipherAlgorithm, CbcAlgorithm, CbcCipher,
    CryptoAlgorithm, CryptoError, HashAlgorithm, HmacAlgorithm, KeyExchangeAlgorithm, Mac,
    PublicKey, PublicKeyEncoding, RTCCrypto, RTCCryptoProvider, RTCRandom, SecretVec,
    SignatureScheme, SigningKey, StreamCipher, StreamCipherAlgorithm,
};
use rtc::dtls::crypto::{Certificate, CryptoPrivateKey};
use rustls::pki_types::CertificateDer;
use sha2::{Digest, Sha256};

/// Where a leg's randomness comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Entropy {
    /// The operating system's generator, as a browser's.
    #[default]
    Os,
    /// A generator seeded with this value: the same seed gives the same certificate, keys,
    /// credentials and handshake bytes.
    Seeded(u64),
}

impl Entropy {
    /// The crypto provider a leg's ICE agent, DTLS endpoint and TURN client draw from.
    pub fn provider(self) -> Result<Arc<dyn RTCCryptoProvider>, String> {
        let os = rtc::crypto::default_provider().map_err(|e| e.to_string())?;
        Ok(match self {
            Self::Os => os,
            Self::Seeded(seed) => Arc::new(SeededProvider {
                os,
                random: SeededRandom(Mutex::new(ChaCha20Rng::seed_from_u64(seed))),
            }),
        })
    }

    /// The seed of a leg of a seeded run: a run's seed, mixed with which call and which side,
    /// so that every leg has its own stream (and the order legs are made in does not matter).
    pub fn for_leg(self, call: u64, side: u64) -> Self {
        match self {
            Self::Os => Self::Os,
            Self::Seeded(seed) => {
                Self::Seeded(splitmix(splitmix(seed ^ splitmix(call)) ^ splitmix(side)))
            }
        }
    }
}

/// SplitMix64's finaliser: mixes a seed into a well-spread one.
fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A self-signed ECDSA P-256 certificate for a leg's DTLS (what browsers use), its key made by
/// and kept in `provider`.
pub fn certificate(
    name: &str,
    provider: &Arc<dyn RTCCryptoProvider>,
) -> Result<Certificate, String> {
    let signer = CertificateSigner::new(provider)?;
    let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
        .and_then(|params| params.self_signed(&signer))
        .map_err(|e| e.to_string())?;
    Ok(Certificate {
        certificate: vec![cert.der().to_owned()],
        private_key: CryptoPrivateKey::from_signing_key(signer.key),
    })
}

/// A TLS server configuration (rustls, ring) for `name` whose certificate and key are made
/// by `provider`, with the certificate to trust: the signalling endpoint of a virtual-time run.
/// Its handshake signatures are `provider`'s too, so a seeded server's are one length.
pub fn tls_server(
    name: &str,
    provider: &Arc<dyn RTCCryptoProvider>,
) -> Result<(Arc<rustls::ServerConfig>, CertificateDer<'static>), String> {
    let identity = certificate(name, provider)?;
    let der = identity.certificate[0].clone();
    let config = server_config(der.clone(), identity.private_key.signing_key)?;
    Ok((config, der))
}

/// A rustls server (ring) presenting `certificate`, signing its handshakes with `key`.
fn server_config(
    certificate: CertificateDer<'static>,
    key: Arc<dyn SigningKey>,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let certified = rustls::sign::CertifiedKey::new(vec![certificate], Arc::new(TlsKey(key)));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(certified)));
    Ok(Arc::new(config))
}

/// A certificate authority whose key, and its leaves' keys, `provider` makes and keeps: the
/// TLS-inspecting proxy's, whose root the agents trust. A seeded authority forges the same
/// certificates in every run, and its signatures are one length, so its handshakes' bytes
/// (and a rate-limited path's timing) replay exactly.
pub struct Authority {
    issuer: rcgen::CertifiedIssuer<'static, CertificateSigner>,
    provider: Arc<dyn RTCCryptoProvider>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority").finish_non_exhaustive()
    }
}

impl Authority {
    /// A root named `name` (its common name), with a key from `provider`.
    pub fn new(name: &str, provider: Arc<dyn RTCCryptoProvider>) -> Result<Self, String> {
        let mut params =
            rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let issuer =
            rcgen::CertifiedIssuer::self_signed(params, CertificateSigner::new(&provider)?)
                .map_err(|e| e.to_string())?;
        Ok(Self { issuer, provider })
    }

    /// The root certificate to trust.
    pub fn certificate(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// A TLS server configuration presenting a fresh leaf for `host` that this authority
    /// signed (its key new, from the authority's provider).
    pub fn tls_server(&self, host: &str) -> Result<Arc<rustls::ServerConfig>, String> {
        let leaf = CertificateSigner::new(&self.provider)?;
        let cert = rcgen::CertificateParams::new(vec![host.to_owned()])
            .and_then(|params| params.signed_by(&leaf, &self.issuer))
            .map_err(|e| e.to_string())?;
        server_config(cert.der().clone(), leaf.key)
    }
}

/// A provider's ECDSA P-256 key as rustls signs with it.
#[derive(Clone)]
struct TlsKey(Arc<dyn SigningKey>);

impl std::fmt::Debug for TlsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsKey(ECDSA P-256)")
    }
}

impl rustls::sign::SigningKey for TlsKey {
    fn choose_scheme(
        &self,
        offered: &[rustls::SignatureScheme],
    ) -> Option<Box<dyn rustls::sign::Signer>> {
        offered
            .contains(&rustls::SignatureScheme::ECDSA_NISTP256_SHA256)
            .then(|| Box::new(self.clone()) as Box<dyn rustls::sign::Signer>)
    }

    fn algorithm(&self) -> rustls::SignatureAlgorithm {
        rustls::SignatureAlgorithm::ECDSA
    }
}

impl rustls::sign::Signer for TlsKey {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        self.0
            .sign(SignatureScheme::EcdsaP256Sha256, message)
            .map_err(|e| rustls::Error::General(e.to_string()))
    }

    fn scheme(&self) -> rustls::SignatureScheme {
        rustls::SignatureScheme::ECDSA_NISTP256_SHA256
    }
}

/// Fresh ICE credentials (RFC 8445 §5.3): a ufrag of 32 random bits and a password of 128, in
/// hex (8 and 32 characters).
pub fn ice_credentials(random: &dyn RTCRandom) -> Result<(String, String), String> {
    let mut bytes = [0u8; 20];
    random.fill(&mut bytes).map_err(|e| e.to_string())?;
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    Ok((hex(&bytes[..4]), hex(&bytes[4..])))
}

/// rcgen signs the certificate with the provider's key.
struct CertificateSigner {
    key: Arc<dyn SigningKey>,
    public: Vec<u8>,
}

impl CertificateSigner {
    /// A new ECDSA P-256 key, made by `provider`.
    fn new(provider: &Arc<dyn RTCCryptoProvider>) -> Result<Self, String> {
        let key = provider
            .crypto()
            .generate_signing_key(SignatureScheme::EcdsaP256Sha256)
            .map_err(|e| e.to_string())?;
        Ok(Self {
            public: key.public_key().bytes.to_vec(),
            key,
        })
    }
}

impl rcgen::PublicKeyData for CertificateSigner {
    fn der_bytes(&self) -> &[u8] {
        &self.public
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

impl rcgen::SigningKey for CertificateSigner {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.key
            .sign(SignatureScheme::EcdsaP256Sha256, msg)
            .map_err(|_| rcgen::Error::RemoteKeyError)
    }
}

/// ChaCha20 from a seed, shared by one leg's ICE, DTLS and TURN client.
struct SeededRandom(Mutex<ChaCha20Rng>);

impl SeededRandom {
    fn bytes<const N: usize>(&self) -> [u8; N] {
        let mut out = [0u8; N];
        self.fill_bytes(&mut out);
        out
    }

    fn fill_bytes(&self, output: &mut [u8]) {
        // A poisoned lock only means another thread panicked mid-draw; the state is still a
        // valid generator's.
        let mut rng = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        rng.fill_bytes(output);
    }

    /// A P-256 scalar in [1, n): drawn again in the ~2⁻³² case it falls outside.
    fn p256_secret(&self) -> p256::SecretKey {
        loop {
            if let Ok(key) = p256::SecretKey::from_slice(&self.bytes::<32>()) {
                return key;
            }
        }
    }
}

impl RTCRandom for SeededRandom {
    fn fill(&self, output: &mut [u8]) -> Result<(), CryptoError> {
        self.fill_bytes(output);
        Ok(())
    }
}

/// ring's operations, with key generation, ECDHE and signing from a seed.
struct SeededProvider {
    os: Arc<dyn RTCCryptoProvider>,
    random: SeededRandom,
}

impl RTCCryptoProvider for SeededProvider {
    fn name(&self) -> &'static str {
        "seeded"
    }

    fn crypto(&self) -> &dyn RTCCrypto {
        self
    }

    fn random(&self) -> &dyn RTCRandom {
        &self.random
    }
}

fn unsupported(algorithm: CryptoAlgorithm) -> CryptoError {
    CryptoError::UnsupportedAlgorithm(algorithm)
}

impl RTCCrypto for SeededProvider {
    fn supports(&self, algorithm: CryptoAlgorithm) -> bool {
        match algorithm {
            CryptoAlgorithm::KeyExchange(k) => k == KeyExchangeAlgorithm::P256,
            CryptoAlgorithm::SigningKeyGeneration(s) | CryptoAlgorithm::SigningKeyImport(s) => {
                s == SignatureScheme::EcdsaP256Sha256
            }
            other => self.os.crypto().supports(other),
        }
    }

    fn hash(&self, algorithm: HashAlgorithm, data: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.os.crypto().hash(algorithm, data)
    }

    fn block_encrypt(
        &self,
        algorithm: BlockCipherAlgorithm,
        key: &[u8],
        block: &mut [u8],
    ) -> Result<(), CryptoError> {
        self.os.crypto().block_encrypt(algorithm, key, block)
    }

    fn new_hmac(&self, algorithm: HmacAlgorithm, key: &[u8]) -> Result<Box<dyn Mac>, CryptoError> {
        self.os.crypto().new_hmac(algorithm, key)
    }

    fn new_stream_cipher(
        &self,
        algorithm: StreamCipherAlgorithm,
        key: &[u8],
    ) -> Result<Box<dyn StreamCipher>, CryptoError> {
        self.os.crypto().new_stream_cipher(algorithm, key)
    }

    fn new_aead(
        &self,
        algorithm: AeadAlgorithm,
        key: &[u8],
    ) -> Result<Box<dyn AeadCipher>, CryptoError> {
        self.os.crypto().new_aead(algorithm, key)
    }

    fn new_cbc(
        &self,
        algorithm: CbcAlgorithm,
        key: &[u8],
    ) -> Result<Box<dyn CbcCipher>, CryptoError> {
        self.os.crypto().new_cbc(algorithm, key)
    }

    fn start_key_exchange(
        &self,
        algorithm: KeyExchangeAlgorithm,
    ) -> Result<Box<dyn ActiveKeyExchange>, CryptoError> {
        if algorithm != KeyExchangeAlgorithm::P256 {
            return Err(unsupported(CryptoAlgorithm::KeyExchange(algorithm)));
        }
        let secret = self.random.p256_secret();
        let public = secret
            .public_key()
            .to_encoded_point(false)
            .as_bytes()
            .to_vec();
        Ok(Box::new(P256Exchange { secret, public }))
    }

    fn generate_signing_key(
        &self,
        scheme: SignatureScheme,
    ) -> Result<Arc<dyn SigningKey>, CryptoError> {
        if scheme != SignatureScheme::EcdsaP256Sha256 {
            return Err(unsupported(CryptoAlgorithm::SigningKeyGeneration(scheme)));
        }
        Ok(Arc::new(P256Signing::new(self.random.p256_secret().into())))
    }

    fn import_signing_key(
        &self,
        scheme: SignatureScheme,
        pkcs8_der: &[u8],
    ) -> Result<Arc<dyn SigningKey>, CryptoError> {
        if scheme != SignatureScheme::EcdsaP256Sha256 {
            return Err(unsupported(CryptoAlgorithm::SigningKeyImport(scheme)));
        }
        let key = p256::ecdsa::SigningKey::from_pkcs8_der(pkcs8_der)
            .map_err(|_| CryptoError::InvalidPrivateKey)?;
        Ok(Arc::new(P256Signing::new(key)))
    }

    fn verify_signature(
        &self,
        scheme: SignatureScheme,
        public_key: PublicKey<'_>,
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), CryptoError> {
        self.os
            .crypto()
            .verify_signature(scheme, public_key, message, signature)
    }
}

/// One ECDHE over P-256 with a seeded key.
struct P256Exchange {
    secret: p256::SecretKey,
    public: Vec<u8>,
}

impl ActiveKeyExchange for P256Exchange {
    fn algorithm(&self) -> KeyExchangeAlgorithm {
        KeyExchangeAlgorithm::P256
    }

    fn public_key(&self) -> &[u8] {
        &self.public
    }

    fn complete(self: Box<Self>, peer_public_key: &[u8]) -> Result<SecretVec, CryptoError> {
        let peer = p256::PublicKey::from_sec1_bytes(peer_public_key)
            .map_err(|_| CryptoError::InvalidPublicKey)?;
        let shared = p256::ecdh::diffie_hellman(self.secret.to_nonzero_scalar(), peer.as_affine());
        Ok(SecretVec::new(shared.raw_secret_bytes().to_vec()))
    }
}

/// The DER length of every seeded ECDSA P-256 signature: one of its two integers with a leading
/// zero (half of all signatures; a quarter are a byte shorter, a quarter a byte longer).
pub const SIGNATURE_LEN: usize = 71;

/// An ECDSA P-256 key signing with RFC 6979's deterministic nonces, to [`SIGNATURE_LEN`].
struct P256Signing {
    key: p256::ecdsa::SigningKey,
    public: Vec<u8>,
}

impl P256Signing {
    fn new(key: p256::ecdsa::SigningKey) -> Self {
        let public = key
            .verifying_key()
            .to_encoded_point(false)
            .as_bytes()
            .to_vec();
        Self { key, public }
    }
}

impl SigningKey for P256Signing {
    fn supports(&self, scheme: SignatureScheme) -> bool {
        scheme == SignatureScheme::EcdsaP256Sha256
    }

    fn public_key(&self) -> PublicKey<'_> {
        PublicKey {
            encoding: PublicKeyEncoding::EcUncompressedPoint,
            bytes: &self.public,
        }
    }

    fn sign(&self, scheme: SignatureScheme, message: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if !self.supports(scheme) {
            return Err(unsupported(CryptoAlgorithm::Signature(scheme)));
        }
        let digest = Sha256::digest(message);
        let scalar = self.key.as_nonzero_scalar();
        // Each try fits with probability ½: 64 tries all missing is a 2⁻⁶⁴ event.
        for attempt in 0u32..64 {
            let (signature, _) = scalar
                .try_sign_prehashed_rfc6979::<Sha256>(&digest, &attempt.to_be_bytes())
                .map_err(|e| CryptoError::Provider(e.to_string()))?;
            let der = signature.to_der();
            if der.len() == SIGNATURE_LEN {
                return Ok(der.as_bytes().to_vec());
            }
        }
        Err(CryptoError::Provider(
            "no signature of the fixed length".into(),
        ))
    }

    fn to_pkcs8_der(&self) -> Result<Option<SecretVec>, CryptoError> {
        let der = p256::SecretKey::from(&self.key)
            .to_pkcs8_der()
            .map_err(|e| CryptoError::Provider(e.to_string()))?;
        Ok(Some(SecretVec::new(der.as_bytes().to_vec())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fingerprint(seed: Entropy) -> (Vec<u8>, Vec<u8>, (String, String)) {
        let provider = seed.provider().unwrap();
        let cert = certificate("leg", &provider).unwrap();
        let signature = cert
            .private_key
            .signing_key
            .sign(SignatureScheme::EcdsaP256Sha256, b"hello")
            .unwrap();
        let ice = ice_credentials(provider.random()).unwrap();
        if seed != Entropy::Os {
            assert_eq!(signature.len(), SIGNATURE_LEN);
        }
        (cert.certificate[0].to_vec(), signature, ice)
    }

    #[test]
    fn a_seed_gives_the_same_certificate_signatures_and_credentials() {
        let a = fingerprint(Entropy::Seeded(7));
        assert_eq!(a, fingerprint(Entropy::Seeded(7)));
        let b = fingerprint(Entropy::Seeded(8));
        assert_ne!(a.0, b.0);
        assert_ne!(a.2, b.2);
        // The OS gives a fresh one each time.
        assert_ne!(fingerprint(Entropy::Os).0, fingerprint(Entropy::Os).0);
    }

    #[test]
    fn seeded_keys_verify_with_ring_and_agree_with_ring_over_ecdhe() {
        let seeded = Entropy::Seeded(1).provider().unwrap();
        let ring = Entropy::Os.provider().unwrap();
        let key = seeded
            .crypto()
            .generate_signing_key(SignatureScheme::EcdsaP256Sha256)
            .unwrap();
        // Over many messages (a fixed length would otherwise hold for ~½ of them): one length,
        // each verified by ring.
        for i in 0u32..64 {
            let message = i.to_be_bytes();
            let signature = key
                .sign(SignatureScheme::EcdsaP256Sha256, &message)
                .unwrap();
            assert_eq!(signature.len(), SIGNATURE_LEN);
            ring.crypto()
                .verify_signature(
                    SignatureScheme::EcdsaP256Sha256,
                    key.public_key(),
                    &message,
                    &signature,
                )
                .unwrap();
        }
        // Through PKCS#8 and back: the same key.
        let der = key.to_pkcs8_der().unwrap().unwrap();
        let again = seeded
            .crypto()
            .import_signing_key(SignatureScheme::EcdsaP256Sha256, der.as_ref())
            .unwrap();
        assert_eq!(again.public_key().bytes, key.public_key().bytes);

        let ours = seeded
            .crypto()
            .start_key_exchange(KeyExchangeAlgorithm::P256)
            .unwrap();
        let theirs = ring
            .crypto()
            .start_key_exchange(KeyExchangeAlgorithm::P256)
            .unwrap();
        let (our_public, their_public) = (ours.public_key().to_vec(), theirs.public_key().to_vec());
        let a = ours.complete(&their_public).unwrap();
        let b = theirs.complete(&our_public).unwrap();
        assert_eq!(a.as_ref(), b.as_ref());
        assert!(
            !seeded
                .crypto()
                .supports(CryptoAlgorithm::KeyExchange(KeyExchangeAlgorithm::X25519))
        );
    }
}
