"""/api/v1/templates through the Flask test client: CRUD, validation, roles, facilities;
and a batch naming a template or carrying overrides."""

from __future__ import annotations

import pytest

TEMPLATE = {
    "name": "CT head",
    "description": "non-contrast head CT",
    "attributes": {
        "InstitutionName": "Clinic North",
        "ReferringPhysicianName": "Who^Doctor",
        "StudyDescription": "CT head without contrast",
    },
}


@pytest.fixture
def auth(make_token):
    def make(facility: str = "Clinic A", role: str = "uploader") -> dict:
        return {"Authorization": f"Bearer {make_token(facility, role)}"}
    return make


def test_create_list_read_update_delete(client, auth):
    uploader = auth()
    created = client.post("/api/v1/templates", json=TEMPLATE, headers=uploader)
    assert created.status_code == 201, created.get_json()
    template = created.get_json()
    assert created.headers["Location"] == f"/api/v1/templates/{template['id']}"
    assert template["attributes"] == TEMPLATE["attributes"]

    listed = client.get("/api/v1/templates", headers=uploader).get_json()["templates"]
    assert [t["name"] for t in listed] == ["CT head"]
    assert client.get(f"/api/v1/templates/{template['id']}", headers=uploader).status_code == 200

    updated = client.patch(f"/api/v1/templates/{template['id']}", headers=uploader,
                           json={"attributes": {"InstitutionName": "Clinic North-East"}})
    assert updated.status_code == 200
    assert updated.get_json()["attributes"] == {"InstitutionName": "Clinic North-East"}
    assert updated.get_json()["name"] == "CT head"

    assert client.delete(f"/api/v1/templates/{template['id']}", headers=uploader).status_code == 204
    assert client.get(f"/api/v1/templates/{template['id']}", headers=uploader).status_code == 404


@pytest.mark.parametrize("body, status, message", [
    ({**TEMPLATE, "attributes": {"SOPInstanceUID": "1.2.3"}}, 400, "SOPInstanceUID"),
    ({**TEMPLATE, "attributes": {"PatientName": "Doe^Jane"}}, 400, "override"),
    ({**TEMPLATE, "attributes": {"InstitutionNam": "x"}}, 400, "not a DICOM keyword"),
    ({**TEMPLATE, "attributes": {"StudyDate": "yesterday"}}, 400, "StudyDate"),
    ({**TEMPLATE, "attributes": {}}, 400, "at least one attribute"),
    ({**TEMPLATE, "name": ""}, 400, "name"),
    ({**TEMPLATE, "colour": "red"}, 400, "unknown fields"),
])
def test_invalid_templates_are_400_with_a_reason(client, auth, body, status, message):
    response = client.post("/api/v1/templates", json=body, headers=auth())
    assert response.status_code == status
    assert message in response.get_json()["error"]["message"]


def test_not_json_is_400(client, auth):
    response = client.post("/api/v1/templates", data="name=x", headers=auth())
    assert response.status_code == 400


def test_duplicate_name_is_409_per_facility(client, auth):
    assert client.post("/api/v1/templates", json=TEMPLATE, headers=auth()).status_code == 201
    assert client.post("/api/v1/templates", json=TEMPLATE, headers=auth()).status_code == 409
    # Another facility may use the same name.
    assert client.post("/api/v1/templates", json=TEMPLATE, headers=auth("Clinic B")).status_code == 201


def test_roles_and_facilities(client, auth):
    template_id = client.post("/api/v1/templates", json=TEMPLATE, headers=auth()).get_json()["id"]
    qa = auth(role="qa_manager")
    assert client.get(f"/api/v1/templates/{template_id}", headers=qa).status_code == 200
    assert client.post("/api/v1/templates", json={**TEMPLATE, "name": "x"}, headers=qa).status_code == 403
    assert client.patch(f"/api/v1/templates/{template_id}", json={"name": "y"}, headers=qa).status_code == 403
    assert client.delete(f"/api/v1/templates/{template_id}", headers=qa).status_code == 403

    other = auth("Clinic B")
    assert client.get(f"/api/v1/templates/{template_id}", headers=other).status_code == 403
    assert client.delete(f"/api/v1/templates/{template_id}", headers=other).status_code == 403
    assert client.get("/api/v1/templates", headers=other).get_json()["templates"] == []

    admin = auth("Head Office", "admin")
    assert client.get(f"/api/v1/templates/{template_id}", headers=admin).status_code == 200
    assert len(client.get("/api/v1/templates", headers=admin).get_json()["templates"]) == 1

    for method in ("get", "post"):
        assert getattr(client, method)("/api/v1/templates").status_code == 401


def test_batch_with_template_and_overrides_records_both(client, auth):
    uploader = auth()
    client.post("/api/v1/templates", json=TEMPLATE, headers=uploader)
    created = client.post("/api/v1/batches", headers=uploader, json={
        "template": "CT head",
        "overrides": {"PAT-1": {"PatientName": "Doe^Jane", "PatientBirthDate": "19800101"}},
    })
    assert created.status_code == 201, created.get_json()
    batch_id = created.get_json()["id"]
    assert created.get_json()["template"] == "CT head"
    report = client.get(f"/api/v1/batches/{batch_id}", headers=uploader).get_json()
    kinds = [(c["kind"], c["subject"]) for c in report["changes"]]
    assert kinds == [("template", "CT head"), ("override", "PAT-1")]
    assert report["changes"][0]["detail"]["attributes"] == TEMPLATE["attributes"]
    assert report["changes"][0]["by"].endswith("@Clinic A.test")

    # Editing the template later does not change the batch: it applied a copy.
    template_id = client.get("/api/v1/templates", headers=uploader).get_json()["templates"][0]["id"]
    client.patch(f"/api/v1/templates/{template_id}", headers=uploader,
                 json={"attributes": {"InstitutionName": "Elsewhere"}})
    changes = client.get(f"/api/v1/batches/{batch_id}/changes", headers=uploader).get_json()["changes"]
    assert changes[0]["detail"]["attributes"]["InstitutionName"] == "Clinic North"


@pytest.mark.parametrize("body, message", [
    ({"template": "no such template"}, "no template named"),
    ({"overrides": {"PAT-1": {"SOPInstanceUID": "1.2"}}}, "SOPInstanceUID"),
    ({"overrides": {"PAT-1": {"PatientSex": "x"}}}, "PatientSex"),
])
def test_batch_with_bad_template_or_override_is_400_and_not_created(client, auth, body, message):
    uploader = auth()
    response = client.post("/api/v1/batches", json=body, headers=uploader)
    assert response.status_code == 400
    assert message in response.get_json()["error"]["message"]
    assert client.get("/api/v1/batches", headers=uploader).get_json()["batches"] == []


def test_template_of_another_facility_is_not_found(client, auth):
    client.post("/api/v1/templates", json=TEMPLATE, headers=auth("Clinic B"))
    response = client.post("/api/v1/batches", json={"template": "CT head"}, headers=auth())
    assert response.status_code == 400
