"""Structured outputs through the official `openai` package: `chat.completions.parse` with
Pydantic models (the schema the client sends is captured from the wire and every answer
validated against it with `jsonschema`), streaming, `json_object`, llama-server's
`grammar`/`regex` fields, Ollama `format`, and 400s for what cannot compile."""

import enum
import json
from typing import Annotated, List, Literal, Optional, Union

import jsonschema
import pytest
from pydantic import BaseModel, Field

from conftest import MODEL

GREEDY = {"temperature": 0, "seed": 1}
Short = Annotated[str, Field(max_length=20)]


# Twenty-two schemas: nested objects, arrays with bounds, enums and Literal, unions
# (anyOf), numbers with ranges, required and optional fields. Strings are bounded so a
# 135M model finishes within the token budget.
class Colour(str, enum.Enum):
    red = "red"
    green = "green"
    blue = "blue"


class City(BaseModel):
    name: str = Field(max_length=20)
    country: str = Field(max_length=20)


class Person(BaseModel):
    name: str = Field(max_length=20)
    age: int = Field(ge=0, le=120)


class PersonWithCity(BaseModel):
    person: Person
    city: City


class Colours(BaseModel):
    colours: List[Colour] = Field(min_length=1, max_length=3)


class Pick(BaseModel):
    choice: Literal["yes", "no", "maybe"]


class Score(BaseModel):
    score: float = Field(ge=0, le=10)


class Temperature(BaseModel):
    celsius: int = Field(gt=-50, lt=60)
    unit: Literal["C"]


class Tags(BaseModel):
    tags: List[Short] = Field(min_length=2, max_length=4)


class OptionalNote(BaseModel):
    title: str = Field(max_length=20)
    note: Optional[str] = Field(default=None, max_length=20)


class IdOrName(BaseModel):
    key: Union[int, str]


class Point(BaseModel):
    x: int = Field(ge=-100, le=100)
    y: int = Field(ge=-100, le=100)


class Polygon(BaseModel):
    points: List[Point] = Field(min_length=3, max_length=4)


class Flag(BaseModel):
    enabled: bool
    reason: str = Field(max_length=24)


class Book(BaseModel):
    title: str = Field(max_length=24)
    year: int = Field(ge=1450, le=2030)
    authors: List[Short] = Field(min_length=1, max_length=2)


class Library(BaseModel):
    books: List[Book] = Field(min_length=1, max_length=2)


class Money(BaseModel):
    amount: float = Field(ge=0, le=1000000)
    currency: Literal["USD", "EUR", "GBP"]


class Step(BaseModel):
    n: int = Field(ge=1, le=9)
    text: str = Field(max_length=24)


class Recipe(BaseModel):
    name: str = Field(max_length=20)
    steps: List[Step] = Field(min_length=1, max_length=3)


class Cat(BaseModel):
    kind: Literal["cat"]
    lives: int = Field(ge=0, le=9)


class Dog(BaseModel):
    kind: Literal["dog"]
    good: bool


class Pet(BaseModel):
    pet: Union[Cat, Dog]


class Matrix(BaseModel):
    rows: List[List[int]] = Field(min_length=2, max_length=2)


class Address(BaseModel):
    street: str = Field(max_length=24)
    number: int = Field(ge=1, le=9999)
    postcode: Optional[str] = Field(default=None, max_length=8)


class Contact(BaseModel):
    name: str = Field(max_length=20)
    emails: List[Short] = Field(max_length=2)
    address: Address
    primary: Optional[Colour] = None


class Ratio(BaseModel):
    numerator: int = Field(ge=0, le=100)
    denominator: int = Field(ge=1, le=100)
    exact: bool


class Event(BaseModel):
    name: str = Field(max_length=20)
    day: int = Field(ge=1, le=31)
    month: Literal["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]


CASES = [
    (Person, "Describe a person."),
    (PersonWithCity, "Describe a person and the city they live in."),
    (Colours, "List your favourite colours."),
    (Pick, "Is water wet?"),
    (Score, "Rate pizza from 0 to 10."),
    (Temperature, "What is the temperature in Paris today?"),
    (Tags, "Give tags for a blog post about cats."),
    (OptionalNote, "Write a note."),
    (IdOrName, "Give a key."),
    (Point, "Give a point on a plane."),
    (Polygon, "Give a triangle."),
    (Flag, "Should the feature be enabled?"),
    (Book, "Describe a famous book."),
    (Library, "List books in a library."),
    (Money, "How much does a coffee cost?"),
    (Recipe, "Give a recipe for tea."),
    (Pet, "Describe a pet."),
    (Matrix, "Give a 2x2 matrix."),
    (Address, "Give an address."),
    (Contact, "Give a contact card."),
    (Ratio, "Give a fraction."),
    (Event, "Name an event and its date."),
]


class Captured:
    """The last chat request body the client sent."""

    def __init__(self):
        self.body = None

    def __call__(self, request):
        if request.url.path.endswith("/chat/completions"):
            self.body = json.loads(request.content)


@pytest.fixture
def captured():
    return Captured()


@pytest.fixture
def client(server, captured):
    from openai import DefaultHttpxClient, OpenAI

    http = DefaultHttpxClient(event_hooks={"request": [captured]}, timeout=300)
    return OpenAI(base_url=server.url + "/v1", api_key=server.api_key, max_retries=0, http_client=http)


def parse(client, **kw):
    completions = client.chat.completions
    if not hasattr(completions, "parse"):
        completions = client.beta.chat.completions
    return completions.parse(**kw)


@pytest.mark.parametrize("model,question", CASES, ids=[m.__name__ for m, _ in CASES])
def test_parse_returns_valid_objects(client, captured, model, question):
    r = parse(
        client,
        model=MODEL,
        messages=[{"role": "user", "content": question + " Answer in JSON."}],
        response_format=model,
        max_tokens=160,
        **GREEDY,
    )
    fmt = captured.body["response_format"]
    assert fmt["type"] == "json_schema"
    schema = fmt["json_schema"]["schema"]
    msg = r.choices[0].message
    assert r.choices[0].finish_reason == "stop", msg.content
    assert isinstance(msg.parsed, model), msg.content
    jsonschema.validate(json.loads(msg.content), schema)


def test_streamed_structured_output_assembles_to_a_valid_object(client, captured):
    kw = dict(
        model=MODEL,
        messages=[{"role": "user", "content": "Describe a book as JSON."}],
        response_format=Book,
        max_tokens=160,
        **GREEDY,
    )
    whole = parse(client, **kw).choices[0].message.content
    schema = captured.body["response_format"]["json_schema"]["schema"]
    stream = client.chat.completions.create(
        stream=True, **{**kw, "response_format": captured.body["response_format"]}
    )
    parts, finish = [], None
    for chunk in stream:
        if chunk.choices:
            parts.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
    text = "".join(parts)
    assert finish == "stop"
    assert text == whole
    jsonschema.validate(json.loads(text), schema)
    Book.model_validate_json(text)


def test_json_object_mode(client):
    r = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Give the capital of France as JSON with the key capital."}],
        response_format={"type": "json_object"},
        max_tokens=60,
        **GREEDY,
    )
    assert r.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(r.choices[0].message.content), dict)


def test_completions_grammar_and_regex_fields(server):
    gbnf = 'root ::= "- " item ("\\n- " item){1,2}\nitem ::= [a-z]{2,10}'
    r = server.post(
        "/v1/completions",
        {"model": MODEL, "prompt": "A shopping list:\n", "max_tokens": 40, "grammar": gbnf, **GREEDY},
    )
    assert r.status_code == 200, r.text
    text = r.json()["choices"][0]["text"]
    lines = text.split("\n")
    assert 2 <= len(lines) <= 3 and all(l.startswith("- ") and l[2:].isalpha() for l in lines), text
    r = server.post(
        "/v1/chat/completions",
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "A date?"}],
            "regex": "20[0-9]{2}-(0[1-9]|1[0-2])-[0-3][0-9]",
            "max_tokens": 20,
            **GREEDY,
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()["choices"][0]
    assert body["finish_reason"] == "stop"
    content = body["message"]["content"]
    assert len(content) == 10 and content[:2] == "20" and content[4] == "-" and content[7] == "-", content


def test_ollama_format(server):
    # Pydantic's schema allows extra properties (JSON Schema's default); closed here so
    # the answer stays within the budget.
    schema = {**Person.model_json_schema(), "additionalProperties": False}
    r = server.post(
        "/api/chat",
        {"model": MODEL, "messages": [{"role": "user", "content": "Describe a person."}], "format": schema,
         "stream": False, "options": {"temperature": 0, "num_predict": 80}},
    )
    assert r.status_code == 200, r.text
    jsonschema.validate(json.loads(r.json()["message"]["content"]), schema)
    r = server.post(
        "/api/generate",
        {"model": MODEL, "prompt": 'Reply with the JSON object {"ok": true} and nothing else.', "format": "json",
         "stream": False,
         "options": {"temperature": 0, "num_predict": 80}},
    )
    assert r.status_code == 200, r.text
    assert r.json()["done_reason"] == "stop", r.json()
    assert isinstance(json.loads(r.json()["response"]), dict)
    r = server.post("/api/generate", {"model": MODEL, "prompt": "x", "format": 3, "stream": False})
    assert r.status_code == 400 and "format" in r.text, r.text


@pytest.mark.parametrize(
    "fields,param",
    [
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/$defs/nope"}}}},
         "response_format"),
        ({"response_format": {"type": "yaml"}}, "response_format"),
        ({"grammar": 'root ::= "unterminated'}, "grammar"),
        ({"regex": "(open"}, "regex"),
        ({"regex": "a", "grammar": 'root ::= "a"'}, "regex"),
    ],
)
def test_what_cannot_compile_is_a_400(server, fields, param):
    r = server.post(
        "/v1/chat/completions",
        {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, **fields},
    )
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param, err
