//! `junit.xml` is valid against the JUnit XML schema CI servers read: the Jenkins xUnit plugin's
//! `junit-10.xsd` (kept in `schema/`), checked with `xmllint --schema` (Debian's
//! `libxml2-utils`, installed when missing) — on the fixture's 60 calls at four sites, on a run
//! with no call, and on ids and messages full of XML metacharacters.

mod support;

use std::path::Path;
use std::process::Command;

use reports::output::junit_xml;
use reports::record::read_records;

const XMLLINT: &str = "/usr/bin/xmllint";

fn validate(name: &str, xml: &str) {
    let dir = support::output_dir(&format!("junit-{name}"));
    let file = dir.join("junit.xml");
    std::fs::write(&file, xml).unwrap();
    let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("schema/junit-10.xsd");
    let out = Command::new(XMLLINT)
        .arg("--noout")
        .arg("--schema")
        .arg(&schema)
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{} does not validate against {}:\n{}",
        file.display(),
        schema.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn junit_xml_validates_against_the_junit_schema() {
    if !support::debian_tool(XMLLINT, "libxml2-utils") {
        return;
    }
    let mut records = read_records(&support::golden_dir().join("calls.jsonl"))
        .unwrap()
        .records;
    let xml = junit_xml("fixture", &records);
    // One testsuite per site, one testcase per call.
    assert_eq!(xml.matches("<testsuite ").count(), 4);
    assert_eq!(xml.matches("<testcase ").count(), records.len());
    assert_eq!(xml.matches("<failure ").count(), 12);
    validate("fixture", &xml);

    validate("empty", &junit_xml("nothing", &[]));

    let r = &mut records[17];
    r.identity.site = "<site & \"quotes\">".into();
    r.identity.call = "c'1'<2>".into();
    if let Some(f) = &mut r.failure {
        f.detail = "a ]]> b & <c>".into();
        f.ccp_message = Some("\"x\" < 'y'".into());
    }
    validate("metacharacters", &junit_xml("s&<>", &records[17..18]));
}
